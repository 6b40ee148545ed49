//! Keeping panics on the plugin's side of the boundary.
//!
//! Functions behind `#[sabi_extern_fn]` and `sabi_trait` vtables are `extern "C"`: a panic that
//! reaches them aborts the whole process. A plugin written against [`crate::plugin`]'s traits
//! needs nothing of this: the glue guards every entry point (and marks the plugin failed). A
//! hand-written implementation of the ABI's traits runs each body inside [`guard`], which turns
//! a panic into an [`ErrorCode::PANICKED`] error.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::std_types::RResult;

use super::error::{ErrorCode, PluginError};

/// Runs `body`, turning a panic into a `PANICKED` error that carries the panic message.
pub fn guard<T>(what: &str, body: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r.into(),
        Err(payload) => RResult::RErr(panic_error(what, payload)),
    }
}

/// Like [`guard`] for an entry point that returns no error: a panic is logged to stderr and
/// `fallback` is returned.
pub fn guard_or<T>(what: &str, fallback: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            eprintln!("ioasis plugin: {}", panic_error(what, payload).message);
            fallback
        }
    }
}

fn panic_error(what: &str, payload: Box<dyn std::any::Any + Send>) -> PluginError {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    PluginError::new(ErrorCode::PANICKED, format!("plugin panicked in {what}: {msg}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_an_error() {
        let r: RResult<(), PluginError> = guard("map", || panic!("boom at {:#x}", 0x1000));
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::PANICKED);
        assert!(e.message.contains("boom at 0x1000"), "{}", e.message);
        assert!(e.message.contains("map"));
        assert_eq!(guard_or("x", 7, || panic!("y")), 7);
    }
}
