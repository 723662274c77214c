//! Read the plugin's status through its `lockstep_status_json` symbol.
//!
//! The symbol lives in the same loaded library as the instances (dlopen of the same path
//! returns the same handle), so this reads the very worker that runs them.

use std::path::Path;

use anyhow::{Context, Result, bail};
use lockstep_net::status::ExportedStatus;

/// Signature of `lockstep_status_json`.
type StatusFn = unsafe extern "C" fn(*mut u8, usize) -> usize;

/// A handle on a loaded Lockstep library's status symbol.
#[derive(Debug)]
pub struct StatusProbe {
    /// Keeps the library mapped while the function pointer is used.
    _library: libloading::Library,
    func: StatusFn,
}

impl StatusProbe {
    /// Look the symbol up in the library at `clap_path`.
    pub fn open(clap_path: &Path) -> Result<Self> {
        // SAFETY: this is our own plugin library; its initialisers are the same ones the CLAP
        // loader already ran, and loading it again only bumps its reference count.
        let library = unsafe { libloading::Library::new(clap_path) }
            .with_context(|| format!("dlopen {}", clap_path.display()))?;
        // SAFETY: the symbol is declared in plugin/src/status_export.rs with exactly `StatusFn`.
        let func: StatusFn = unsafe {
            *library
                .get::<StatusFn>(b"lockstep_status_json\0")
                .context("the bundle has no lockstep_status_json symbol")?
        };
        Ok(Self {
            _library: library,
            func,
        })
    }

    /// The raw JSON text.
    pub fn json(&self) -> Result<String> {
        let mut buf = vec![0u8; 4096];
        for _ in 0..4 {
            // SAFETY: `buf` is valid for `buf.len()` bytes, as the symbol's contract requires.
            let len = unsafe { (self.func)(buf.as_mut_ptr(), buf.len()) };
            if len <= buf.len() {
                buf.truncate(len);
                return String::from_utf8(buf).context("status is not UTF-8");
            }
            buf.resize(len + 1024, 0);
        }
        bail!("status kept growing while being read")
    }

    /// The parsed status.
    pub fn read(&self) -> Result<ExportedStatus> {
        let json = self.json()?;
        serde_json::from_str(&json).with_context(|| format!("unparseable status: {json}"))
    }
}
