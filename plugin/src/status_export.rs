//! `lockstep_status_json`: the worker's status as JSON, through a plain C symbol.
//!
//! DAWs never call it. Lockstep's own headless runner and the end-to-end tests load the built
//! `.clap` with `dlopen` anyway (through clack-host), so they look this symbol up in the same
//! library and read exactly the state of the worker that runs the loaded instances: no socket,
//! no extra protocol. The JSON is [`lockstep_net::status::ExportedStatus`].

use lockstep_net::status::ExportedStatus;
use lockstep_net::worker;

/// The current status as a JSON string.
pub fn status_json() -> String {
    let exported = ExportedStatus {
        worker: worker::status(),
        live_worker_threads: worker::live_worker_threads(),
    };
    serde_json::to_string(&exported).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}

/// Copy the status JSON (UTF-8, no terminating NUL) into `buf` if it fits in `capacity` bytes.
/// Returns the JSON's length in bytes; a return value above `capacity` means nothing was written
/// and the caller should retry with a larger buffer.
///
/// Thread-safe; never call it from an audio thread (it locks and allocates).
///
/// # Safety
/// `buf` must be null (with any `capacity`, to ask for the length) or valid for writes of
/// `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_status_json(buf: *mut u8, capacity: usize) -> usize {
    let json = status_json();
    if !buf.is_null() && json.len() <= capacity {
        // SAFETY: the caller guarantees `buf` is valid for `capacity` bytes, and we write
        // `json.len() <= capacity` bytes from a buffer that cannot overlap it (we just made it).
        unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), buf, json.len()) };
    }
    json.len()
}
