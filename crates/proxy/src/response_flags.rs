//! Envoy's response flags (`%RESPONSE_FLAGS%`): why a stream ended the way it did.

use std::fmt;

/// A set of Envoy response flags, in the order they were set (Envoy prints them in that
/// order: a retried reset is `URX,UC`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags {
    bits: u32,
    /// The flags' bit numbers in the order they were set, 4 bits each, first in the lowest.
    order: u64,
}

macro_rules! flags {
    ($($name:ident = $bit:expr, $short:literal;)*) => {
        impl ResponseFlags {
            $(
                #[doc = concat!("`", $short, "`")]
                pub const $name: ResponseFlags = ResponseFlags { bits: 1 << $bit, order: $bit };
            )*
            const ALL: &'static [(ResponseFlags, &'static str)] = &[$((Self::$name, $short),)*];
        }
    };
}

// Order is Envoy's `ResponseFlagUtils` order, which is the order it prints them in.
flags! {
    FAILED_LOCAL_HEALTH_CHECK = 0, "LH";
    NO_HEALTHY_UPSTREAM = 1, "UH";
    UPSTREAM_REQUEST_TIMEOUT = 2, "UT";
    LOCAL_RESET = 3, "LR";
    UPSTREAM_REMOTE_RESET = 4, "UR";
    UPSTREAM_CONNECTION_FAILURE = 5, "UF";
    UPSTREAM_CONNECTION_TERMINATION = 6, "UC";
    UPSTREAM_OVERFLOW = 7, "UO";
    NO_ROUTE_FOUND = 8, "NR";
    RATE_LIMITED = 9, "RL";
    DOWNSTREAM_CONNECTION_TERMINATION = 10, "DC";
    UPSTREAM_RETRY_LIMIT_EXCEEDED = 11, "URX";
    STREAM_IDLE_TIMEOUT = 12, "SI";
    DOWNSTREAM_PROTOCOL_ERROR = 13, "DPE";
    UPSTREAM_PROTOCOL_ERROR = 14, "UPE";
    NO_CLUSTER_FOUND = 15, "NC";
}

impl ResponseFlags {
    /// Adds `other`'s flags (those not set yet, after the ones that are).
    pub fn insert(&mut self, other: ResponseFlags) {
        for bit in other.bits_in_order() {
            if self.bits & (1 << bit) == 0 {
                let n = self.bits.count_ones();
                self.order |= u64::from(bit) << (4 * n);
                self.bits |= 1 << bit;
            }
        }
    }

    /// The bit numbers of the set flags, in the order they were set.
    fn bits_in_order(self) -> impl Iterator<Item = u32> {
        (0..self.bits.count_ones()).map(move |i| ((self.order >> (4 * i)) & 0xf) as u32)
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: ResponseFlags) -> bool {
        self.bits & other.bits == other.bits
    }

    /// The flags as Envoy's legacy bit mask (`StreamInfo::legacyResponseFlags`, what the
    /// `response.flags` attribute holds): each flag at its `CoreResponseFlag` position.
    pub fn envoy_bits(self) -> u64 {
        const POSITIONS: [(ResponseFlags, u32); 16] = [
            (ResponseFlags::FAILED_LOCAL_HEALTH_CHECK, 0),
            (ResponseFlags::NO_HEALTHY_UPSTREAM, 1),
            (ResponseFlags::UPSTREAM_REQUEST_TIMEOUT, 2),
            (ResponseFlags::LOCAL_RESET, 3),
            (ResponseFlags::UPSTREAM_REMOTE_RESET, 4),
            (ResponseFlags::UPSTREAM_CONNECTION_FAILURE, 5),
            (ResponseFlags::UPSTREAM_CONNECTION_TERMINATION, 6),
            (ResponseFlags::UPSTREAM_OVERFLOW, 7),
            (ResponseFlags::NO_ROUTE_FOUND, 8),
            (ResponseFlags::RATE_LIMITED, 11),
            (ResponseFlags::DOWNSTREAM_CONNECTION_TERMINATION, 14),
            (ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED, 15),
            (ResponseFlags::STREAM_IDLE_TIMEOUT, 16),
            (ResponseFlags::DOWNSTREAM_PROTOCOL_ERROR, 18),
            (ResponseFlags::UPSTREAM_PROTOCOL_ERROR, 23),
            (ResponseFlags::NO_CLUSTER_FOUND, 24),
        ];
        POSITIONS
            .iter()
            .filter(|(f, _)| self.contains(*f))
            .fold(0, |acc, (_, bit)| acc | 1 << bit)
    }

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.bits == 0
    }
}

impl fmt::Display for ResponseFlags {
    /// Envoy's short form, in the order the flags were set: `UF,URX`, or `-` when empty.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, bit) in self.bits_in_order().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let short = Self::ALL
                .iter()
                .find(|(flag, _)| flag.bits == 1 << bit)
                .map_or("", |(_, s)| s);
            f.write_str(short)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_like_envoy() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        f.insert(ResponseFlags::NO_HEALTHY_UPSTREAM);
        f.insert(ResponseFlags::UPSTREAM_CONNECTION_FAILURE);
        assert_eq!(f.to_string(), "UF,UH");
        let mut g = ResponseFlags::default();
        g.insert(ResponseFlags::UPSTREAM_RETRY_LIMIT_EXCEEDED);
        g.insert(f);
        assert_eq!(g.to_string(), "URX,UF,UH");
        assert!(g.contains(ResponseFlags::NO_HEALTHY_UPSTREAM));
    }
}
