//! Guest memory access: bounds-checked slices, out-pointer writes and return-by-allocation
//! (ABI doc 4.1). A bad pointer gives `InvalidMemoryAccess`, never a host panic.

use wasmtime::Caller;

use crate::abi::Status;
use crate::state::{Phase, VmState};

/// A status as the `i32` the guest sees.
pub(super) fn st(s: Status) -> wasmtime::Result<i32> {
    Ok(s as i32)
}

/// Traps if a `proxy_*` call other than logging comes during start-up (cpp-host's
/// `restricted_callback`).
pub(super) fn running(c: &Caller<'_, VmState>) -> wasmtime::Result<()> {
    if c.data().phase == Phase::Startup {
        wasmtime::bail!(
            "restricted callback: only logging and WASI calls are allowed during start-up"
        );
    }
    Ok(())
}

/// The guest memory and the state, borrowed together.
pub(super) fn split<'a>(
    c: &'a mut Caller<'_, VmState>,
) -> wasmtime::Result<(&'a mut [u8], &'a mut VmState)> {
    let mem = c
        .data()
        .memory
        .ok_or_else(|| wasmtime::format_err!("module has no exported memory"))?;
    Ok(mem.data_and_store_mut(c))
}

/// `[ptr, ptr+len)` of guest memory, if entirely inside it.
pub(super) fn slice(mem: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    if l == 0 {
        return Ok(&[]);
    }
    let end = p.checked_add(l).ok_or(Status::InvalidMemoryAccess)?;
    mem.get(p..end).ok_or(Status::InvalidMemoryAccess)
}

/// Writes a little-endian `u32` at `ptr`.
pub(super) fn put_u32(mem: &mut [u8], ptr: i32, v: u32) -> Result<(), Status> {
    let p = ptr as u32 as usize;
    let dst = mem.get_mut(p..p.checked_add(4).ok_or(Status::InvalidMemoryAccess)?);
    dst.ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Writes a little-endian `u64` at `ptr`.
pub(super) fn put_u64(mem: &mut [u8], ptr: i32, v: u64) -> Result<(), Status> {
    let p = ptr as u32 as usize;
    let dst = mem.get_mut(p..p.checked_add(8).ok_or(Status::InvalidMemoryAccess)?);
    dst.ok_or(Status::InvalidMemoryAccess)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Writes `u32` at `ptr` through the caller.
pub(super) fn write_u32(c: &mut Caller<'_, VmState>, ptr: i32, v: u32) -> wasmtime::Result<Status> {
    let (mem, _) = split(c)?;
    Ok(match put_u32(mem, ptr, v) {
        Ok(()) => Status::Ok,
        Err(s) => s,
    })
}

/// Like [`copy_out`], but copies straight from host state: `get` finds the bytes again after
/// the guest allocator ran (no intermediate copy on the hot path). If they are gone or changed
/// size meanwhile, the call fails with `InvalidMemoryAccess`.
pub(super) fn copy_out_from(
    c: &mut Caller<'_, VmState>,
    len: usize,
    get: impl Fn(&VmState) -> Option<&[u8]>,
    ptr_out: i32,
    len_out: i32,
) -> wasmtime::Result<Status> {
    if len == 0 {
        return copy_out(c, &[], ptr_out, len_out);
    }
    let Ok(len_i32) = i32::try_from(len) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let alloc = c
        .data()
        .allocator
        .clone()
        .ok_or_else(|| wasmtime::format_err!("module exports no allocator"))?;
    let ptr = alloc.call(&mut *c, len_i32)?;
    if ptr == 0 {
        return Ok(Status::InvalidMemoryAccess);
    }
    let (mem, state) = split(c)?;
    let p = ptr as u32 as usize;
    let Some(src) = get(state).filter(|b| b.len() == len) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let Some(dst) = p.checked_add(len).and_then(|end| mem.get_mut(p..end)) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    dst.copy_from_slice(src);
    if let Err(s) =
        put_u32(mem, ptr_out, ptr as u32).and_then(|_| put_u32(mem, len_out, len as u32))
    {
        return Ok(s);
    }
    Ok(Status::Ok)
}

/// Hands `bytes` to the guest: allocates with the guest's allocator, copies, and writes
/// `(ptr, len)` to the two out-pointers. Empty data writes `(0, 0)` without allocating.
pub(super) fn copy_out(
    c: &mut Caller<'_, VmState>,
    bytes: &[u8],
    ptr_out: i32,
    len_out: i32,
) -> wasmtime::Result<Status> {
    if bytes.is_empty() {
        let (mem, _) = split(c)?;
        if let Err(s) = put_u32(mem, ptr_out, 0).and_then(|_| put_u32(mem, len_out, 0)) {
            return Ok(s);
        }
        return Ok(Status::Ok);
    }
    let Ok(len) = i32::try_from(bytes.len()) else {
        return Ok(Status::InvalidMemoryAccess);
    };
    let alloc = c
        .data()
        .allocator
        .clone()
        .ok_or_else(|| wasmtime::format_err!("module exports no allocator"))?;
    let ptr = alloc.call(&mut *c, len)?;
    if ptr == 0 {
        return Ok(Status::InvalidMemoryAccess);
    }
    let (mem, _) = split(c)?;
    let p = ptr as u32 as usize;
    let Some(dst) = p
        .checked_add(bytes.len())
        .and_then(|end| mem.get_mut(p..end))
    else {
        return Ok(Status::InvalidMemoryAccess);
    };
    dst.copy_from_slice(bytes);
    if let Err(s) =
        put_u32(mem, ptr_out, ptr as u32).and_then(|_| put_u32(mem, len_out, len as u32))
    {
        return Ok(s);
    }
    Ok(Status::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_are_bounds_checked() {
        let mem = vec![1u8; 16];
        assert_eq!(slice(&mem, 0, 16).map(|s| s.len()), Ok(16));
        assert_eq!(slice(&mem, 8, 9), Err(Status::InvalidMemoryAccess));
        assert_eq!(slice(&mem, -1, 2), Err(Status::InvalidMemoryAccess));
        assert_eq!(
            slice(&mem, i32::MAX, i32::MAX),
            Err(Status::InvalidMemoryAccess)
        );
        assert_eq!(
            slice(&mem, 100, 0),
            Ok(&[][..]),
            "(ptr, 0) is empty, like (0, 0)"
        );
        let mut mem = vec![0u8; 8];
        assert_eq!(put_u32(&mut mem, 5, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(put_u64(&mut mem, 0, u64::MAX), Ok(()));
        assert_eq!(put_u64(&mut mem, -8, 1), Err(Status::InvalidMemoryAccess));
    }
}
