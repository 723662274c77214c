//! Read the plugin's diagnostics through its exported symbols (`lockstep_status_json`,
//! `lockstep_clock_record`, `lockstep_clock_recorded_json`; see plugin/src/status_export.rs).
//!
//! The symbols live in the same loaded library as the instances (dlopen of the same path
//! returns the same handle), so this reads the very worker that runs them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lockstep_net::status::ExportedStatus;
use lockstep_net::worker::SentClock;
use lockstep_net::worker::osc::TransportRequest;
use serde::Deserialize;

/// Signature of the `*_json` symbols.
type JsonFn = unsafe extern "C" fn(*mut u8, usize) -> usize;
/// Signature of `lockstep_clock_record`.
type RecordFn = extern "C" fn(usize);
/// Signature of `lockstep_transport_control`.
type ControlFn = extern "C" fn(bool);

/// A handle on a loaded Lockstep library's diagnostic symbols.
#[derive(Debug)]
pub struct StatusProbe {
    /// Keeps the library mapped while the function pointers are used.
    _library: libloading::Library,
    status: JsonFn,
    record: RecordFn,
    recorded: JsonFn,
    transport_control: ControlFn,
    transport_requests: JsonFn,
}

/// The clock recording.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClockRecording {
    /// Messages in the order the worker sent them.
    pub messages: Vec<SentClock>,
    /// Messages that did not fit.
    pub overflowed: u64,
}

impl StatusProbe {
    /// Look the symbols up in the library at `clap_path`.
    pub fn open(clap_path: &Path) -> Result<Self> {
        // SAFETY: this is our own plugin library; its initialisers are the same ones the CLAP
        // loader already ran, and loading it again only bumps its reference count.
        let library = unsafe { libloading::Library::new(clap_path) }
            .with_context(|| format!("dlopen {}", clap_path.display()))?;
        // SAFETY: the symbols are declared in plugin/src/status_export.rs with exactly these
        // signatures.
        let (status, record, recorded, transport_control, transport_requests) = unsafe {
            (
                *library
                    .get::<JsonFn>(b"lockstep_status_json\0")
                    .context("the bundle has no lockstep_status_json symbol")?,
                *library
                    .get::<RecordFn>(b"lockstep_clock_record\0")
                    .context("the bundle has no lockstep_clock_record symbol")?,
                *library
                    .get::<JsonFn>(b"lockstep_clock_recorded_json\0")
                    .context("the bundle has no lockstep_clock_recorded_json symbol")?,
                *library
                    .get::<ControlFn>(b"lockstep_transport_control\0")
                    .context("the bundle has no lockstep_transport_control symbol")?,
                *library
                    .get::<JsonFn>(b"lockstep_transport_requests_json\0")
                    .context("the bundle has no lockstep_transport_requests_json symbol")?,
            )
        };
        Ok(Self {
            _library: library,
            status,
            record,
            recorded,
            transport_control,
            transport_requests,
        })
    }

    fn json(&self, func: JsonFn) -> Result<String> {
        // SAFETY: a null buffer asks for the length only.
        let mut buf = vec![0u8; unsafe { func(std::ptr::null_mut(), 0) } + 4096];
        for _ in 0..4 {
            // SAFETY: `buf` is valid for `buf.len()` bytes, as the symbol's contract requires.
            let len = unsafe { func(buf.as_mut_ptr(), buf.len()) };
            if len <= buf.len() {
                buf.truncate(len);
                return String::from_utf8(buf).context("diagnostics are not UTF-8");
            }
            buf.resize(len + 65_536, 0);
        }
        bail!("diagnostics kept growing while being read")
    }

    /// The raw status JSON text.
    pub fn status_json(&self) -> Result<String> {
        self.json(self.status)
    }

    /// The parsed status.
    pub fn read(&self) -> Result<ExportedStatus> {
        let json = self.status_json()?;
        serde_json::from_str(&json).with_context(|| format!("unparseable status: {json}"))
    }

    /// Start recording up to `capacity` clock messages (0 stops).
    pub fn record_clock(&self, capacity: usize) {
        (self.record)(capacity);
    }

    /// Take transport requests from OSC (the headless runner does; a DAW cannot).
    pub fn set_transport_control(&self, enabled: bool) {
        (self.transport_control)(enabled);
    }

    /// Transport requests that arrived since the last call.
    pub fn take_transport_requests(&self) -> Result<Vec<TransportRequest>> {
        let json = self.json(self.transport_requests)?;
        serde_json::from_str(&json).context("unparseable transport requests")
    }

    /// What has been recorded.
    pub fn recorded_clock(&self) -> Result<ClockRecording> {
        let json = self.json(self.recorded)?;
        serde_json::from_str(&json).context("unparseable clock recording")
    }
}
