//! test plugins
