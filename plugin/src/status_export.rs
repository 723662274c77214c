//! Diagnostics through plain C symbols: the worker's status and the clock messages it passed on,
//! as JSON.
//!
//! DAWs never call these. Lockstep's own headless runner and the end-to-end tests load the built
//! `.clap` with `dlopen` anyway (through clack-host), so they look these symbols up in the same
//! library and read exactly the state of the worker that runs the loaded instances: no socket,
//! no extra protocol.
//!
//! Every `*_json` symbol has the same contract: copy the JSON (UTF-8, no terminating NUL) into
//! `buf` if it fits in `capacity` bytes and return its length; a length above `capacity` means
//! nothing was written and the caller should retry with a larger buffer. Thread-safe; never call
//! them from an audio thread (they lock and allocate).

use lockstep_net::status::ExportedStatus;
use lockstep_net::worker::{self, SentClock};
use serde::Serialize;

/// The current status as a JSON string ([`ExportedStatus`]).
pub fn status_json() -> String {
    let exported = ExportedStatus {
        worker: worker::status(),
        live_worker_threads: worker::live_worker_threads(),
    };
    to_json(&exported)
}

/// The recorded clock messages as a JSON object `{"messages": [SentClock...], "overflowed": n}`.
pub fn recorded_clock_json() -> String {
    #[derive(Serialize)]
    struct Log {
        messages: Vec<SentClock>,
        overflowed: u64,
    }
    let (messages, overflowed) = worker::recorded_clock();
    to_json(&Log {
        messages,
        overflowed,
    })
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| format!("{{\"error\":\"{err}\"}}"))
}

/// Copy `json` into `buf` under the contract in the module docs.
///
/// # Safety
/// `buf` must be null or valid for writes of `capacity` bytes.
unsafe fn copy_out(json: &str, buf: *mut u8, capacity: usize) -> usize {
    if !buf.is_null() && json.len() <= capacity {
        // SAFETY: the caller guarantees `buf` is valid for `capacity` bytes, and we write
        // `json.len() <= capacity` bytes from a buffer that cannot overlap it (we just made it).
        unsafe { std::ptr::copy_nonoverlapping(json.as_ptr(), buf, json.len()) };
    }
    json.len()
}

/// The worker's status as JSON (see the module docs for the buffer contract).
///
/// # Safety
/// `buf` must be null (with any `capacity`, to ask for the length) or valid for writes of
/// `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_status_json(buf: *mut u8, capacity: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { copy_out(&status_json(), buf, capacity) }
}

/// Start recording up to `capacity` clock messages the worker passes on (emptying any earlier
/// recording); 0 stops recording.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_clock_record(capacity: usize) {
    worker::record_clock(capacity);
}

/// The recorded clock messages as JSON (see the module docs for the buffer contract).
///
/// # Safety
/// `buf` must be null (with any `capacity`) or valid for writes of `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_clock_recorded_json(buf: *mut u8, capacity: usize) -> usize {
    // SAFETY: forwarded caller contract.
    unsafe { copy_out(&recorded_clock_json(), buf, capacity) }
}

/// Lockstep's headless runner (never a DAW) takes transport requests from OSC
/// (`/lockstep/transport/{play,stop,tempo,locate}`) when this is called with `true`.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_transport_control(enabled: bool) {
    worker::set_transport_control(enabled);
}

/// The transport requests waiting, as a JSON array, taken out only if they fit (see the module
/// docs for the buffer contract).
///
/// # Safety
/// `buf` must be null (with any `capacity`) or valid for writes of `capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_transport_requests_json(buf: *mut u8, capacity: usize) -> usize {
    let mut json = String::new();
    let taken = worker::take_transport_requests(|waiting| {
        json = to_json(&waiting);
        !buf.is_null() && json.len() <= capacity
    });
    let _ = taken;
    // SAFETY: forwarded caller contract.
    unsafe { copy_out(&json, buf, capacity) }
}
