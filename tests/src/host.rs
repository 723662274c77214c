//! The clack-host side: handlers, loading the bundle, instances, parameters and state.

use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use clack_extensions::audio_ports_config::PluginAudioPortsConfig;
use clack_extensions::gui::{
    GuiApiType, GuiConfiguration, GuiSize, HostGui, HostGuiImpl, PluginGui, Window,
};
use clack_extensions::log::{HostLog, HostLogImpl, LogSeverity};
use clack_extensions::params::{
    HostParams, HostParamsImplMainThread, HostParamsImplShared, ParamClearFlags, ParamInfoBuffer,
    ParamRescanFlags, PluginParams,
};
use clack_extensions::state::{HostState, HostStateImpl, PluginState};
use clack_host::prelude::*;
use lockstep_net::settings::NetSettings;

use crate::processor::Processor;

/// Lockstep's CLAP id (plugin/src/lib.rs `CLAP_ID`).
pub const LOCKSTEP_CLAP_ID: &CStr = c"dev.lockstep.lockstep";

/// The host's handler types.
#[derive(Debug)]
pub struct Host;

/// Host data shared across threads.
#[derive(Default)]
pub struct Shared {
    params: OnceLock<Option<PluginParams>>,
    state: OnceLock<Option<PluginState>>,
    ports_config: OnceLock<Option<PluginAudioPortsConfig>>,
    gui: OnceLock<Option<PluginGui>>,
    /// The plugin asked for a restart / process / main-thread callback.
    pub restart_requested: AtomicBool,
    /// The plugin asked for `on_main_thread`.
    pub callback_requested: AtomicBool,
    /// Messages the plugin logged at warning level or above.
    pub problems: Mutex<Vec<String>>,
    /// Times the plugin marked its state dirty.
    pub dirty_marks: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// Main-thread host data.
#[derive(Debug)]
pub struct MainThread<'a> {
    shared: &'a Shared,
}

impl HostHandlers for Host {
    type Shared<'a> = Shared;
    type MainThread<'a> = MainThread<'a>;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder
            .register::<HostLog>()
            .register::<HostParams>()
            .register::<HostState>()
            .register::<HostGui>();
    }
}

impl<'a> SharedHandler<'a> for Shared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.params.set(instance.get_extension());
        let _ = self.state.set(instance.get_extension());
        let _ = self.ports_config.set(instance.get_extension());
        let _ = self.gui.set(instance.get_extension());
    }
    fn request_restart(&self) {
        self.restart_requested.store(true, Ordering::SeqCst);
    }
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::SeqCst);
    }
}

impl<'a> MainThreadHandler<'a> for MainThread<'a> {}

/// The editor lives in a window the host made (a fixed size here): resize requests are
/// refused, show/hide are the host's business.
impl HostGuiImpl for Shared {
    fn resize_hints_changed(&self) {}
    fn request_resize(&self, _new_size: GuiSize) -> Result<(), HostError> {
        Err(HostError::Message(
            "the test host's window has a fixed size",
        ))
    }
    fn request_show(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn request_hide(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn closed(&self, _was_destroyed: bool) {}
}

impl HostLogImpl for Shared {
    fn log(&self, severity: LogSeverity, message: &str) {
        if matches!(
            severity,
            LogSeverity::Warning | LogSeverity::Error | LogSeverity::Fatal
        ) {
            // Never called from our audio thread by a well-behaved plugin; if it is, the
            // allocation-checking debug bundle catches it.
            if let Ok(mut problems) = self.problems.lock() {
                problems.push(format!("{severity:?}: {message}"));
            }
        }
    }
}

impl HostParamsImplShared for Shared {
    fn request_flush(&self) {}
}

impl HostParamsImplMainThread for MainThread<'_> {
    fn rescan(&self, _flags: ParamRescanFlags) {}
    fn clear(&self, _param_id: ClapId, _flags: ParamClearFlags) {}
}

impl HostStateImpl for MainThread<'_> {
    fn mark_dirty(&self) {
        self.shared.dirty_marks.fetch_add(1, Ordering::Relaxed);
    }
}

/// A loaded `.clap` file.
pub struct Bundle {
    entry: PluginEntry,
    path: PathBuf,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle").field("path", &self.path).finish()
    }
}

/// One parameter as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDescription {
    /// CLAP parameter id (nice-plug hashes the string id).
    pub id: u32,
    /// Display name.
    pub name: String,
    /// Group path.
    pub module: String,
    /// Plain range and default.
    pub min: f64,
    /// Plain maximum.
    pub max: f64,
    /// Plain default.
    pub default: f64,
}

/// Audio channel layout of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 2 in, 2 out (nice-plug config 0).
    Stereo,
    /// 1 in, 1 out (nice-plug config 1).
    Mono,
}

impl Layout {
    /// Channels per port.
    pub fn channels(self) -> usize {
        match self {
            Layout::Stereo => 2,
            Layout::Mono => 1,
        }
    }
}

impl Bundle {
    /// Load the CLAP entry of the bundle at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{} does not exist: build it first with `cargo xtask bundle lockstep --release`",
                path.display()
            );
        }
        // SAFETY: loading runs the library's initialisers; this is our own plugin bundle.
        let entry = unsafe { PluginEntry::load(path) }
            .map_err(|e| anyhow!("loading {}: {e:?}", path.display()))?;
        Ok(Self {
            entry,
            path: path.to_owned(),
        })
    }

    /// Path the bundle was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (id, name) of every plugin in the bundle's factory.
    pub fn descriptors(&self) -> Result<Vec<(String, String, Vec<String>)>> {
        let factory = self
            .entry
            .get_plugin_factory()
            .context("bundle has no plugin factory")?;
        Ok(factory
            .plugin_descriptors()
            .map(|d| {
                let text = |c: Option<&CStr>| c.map(|c| c.to_string_lossy().into_owned());
                (
                    text(d.id()).unwrap_or_default(),
                    text(d.name()).unwrap_or_default(),
                    d.features()
                        .map(|f| f.to_string_lossy().into_owned())
                        .collect(),
                )
            })
            .collect())
    }

    /// Create a Lockstep instance.
    pub fn instantiate(&self) -> Result<Instance> {
        self.instantiate_id(LOCKSTEP_CLAP_ID)
    }

    /// Create an instance of the plugin with CLAP id `id` (the bench baseline has its own).
    pub fn instantiate_id(&self, id: &CStr) -> Result<Instance> {
        let host_info = HostInfo::new(
            "Lockstep headless host",
            "Lockstep",
            "https://example.invalid/lockstep",
            env!("CARGO_PKG_VERSION"),
        )
        .map_err(|e| anyhow!("host info: {e:?}"))?;
        let instance = PluginInstance::<Host>::new(
            |_| Shared::default(),
            |shared| MainThread { shared },
            &self.entry,
            id,
            &host_info,
        )
        .map_err(|e| anyhow!("instantiating {id:?}: {e:?}"))?;
        Ok(Instance { instance })
    }
}

/// One instance, on the main thread.
pub struct Instance {
    instance: PluginInstance<Host>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance").finish_non_exhaustive()
    }
}

impl Instance {
    fn shared<R>(&self, f: impl FnOnce(&Shared) -> R) -> R {
        f(self.instance.access_shared_handler(|s| s))
    }

    /// Every parameter the plugin exposes, in the plugin's order.
    pub fn params(&mut self) -> Result<Vec<ParamDescription>> {
        let ext = self
            .shared(|s| s.params.get().copied().flatten())
            .context("plugin has no params extension")?;
        let handle = self.instance.plugin_handle();
        let mut out = Vec::new();
        let mut buffer = ParamInfoBuffer::new();
        for index in 0..ext.count(&handle) {
            let info = ext
                .get_info(&handle, index, &mut buffer)
                .with_context(|| format!("param info {index}"))?;
            out.push(ParamDescription {
                id: info.id.get(),
                name: String::from_utf8_lossy(info.name).into_owned(),
                module: String::from_utf8_lossy(info.module).into_owned(),
                min: info.min_value,
                max: info.max_value,
                default: info.default_value,
            });
        }
        Ok(out)
    }

    /// The current plain value of parameter `id`.
    pub fn param_value(&mut self, id: u32) -> Result<f64> {
        let ext = self
            .shared(|s| s.params.get().copied().flatten())
            .context("plugin has no params extension")?;
        let clap_id = ClapId::from_raw(id).context("invalid param id")?;
        ext.get_value(&self.instance.plugin_handle(), clap_id)
            .with_context(|| format!("no value for param {id}"))
    }

    /// Save the plugin state to bytes.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let ext = self
            .shared(|s| s.state.get().copied().flatten())
            .context("plugin has no state extension")?;
        let mut bytes = Vec::new();
        ext.save(&self.instance.plugin_handle(), &mut bytes)
            .map_err(|e| anyhow!("state save: {e:?}"))?;
        Ok(bytes)
    }

    /// Load plugin state from bytes.
    pub fn load_state(&mut self, mut bytes: &[u8]) -> Result<()> {
        let ext = self
            .shared(|s| s.state.get().copied().flatten())
            .context("plugin has no state extension")?;
        ext.load(&self.instance.plugin_handle(), &mut bytes)
            .map_err(|e| anyhow!("state load: {e:?}"))
    }

    /// The persistent network settings, read from the saved state.
    pub fn net_settings(&mut self) -> Result<NetSettings> {
        let state = decode_state(&self.save_state()?)?;
        let text = state["fields"]["net"]
            .as_str()
            .context("state has no net settings")?;
        serde_json::from_str(text).context("net settings in the state")
    }

    /// Replace the persistent network settings through a state load, as a DAW restoring a
    /// project would (call before activating).
    pub fn set_net_settings(&mut self, settings: &NetSettings) -> Result<()> {
        let mut state = decode_state(&self.save_state()?)?;
        state["fields"]["net"] = serde_json::to_string(settings)?.into();
        self.load_state(&encode_state(&state)?)
    }

    /// Select the audio layout (must be inactive).
    pub fn select_layout(&mut self, layout: Layout) -> Result<()> {
        let ext = self
            .shared(|s| s.ports_config.get().copied().flatten())
            .context("plugin has no audio-ports-config extension")?;
        let id = match layout {
            Layout::Stereo => 0,
            Layout::Mono => 1,
        };
        ext.select(
            &self.instance.plugin_handle(),
            ClapId::from_raw(id).context("config id")?,
        )
        .map_err(|e| anyhow!("selecting {layout:?}: {e:?}"))
    }

    /// Warnings and errors the plugin logged so far.
    pub fn problems(&self) -> Vec<String> {
        self.shared(|s| s.problems.lock().map(|p| p.clone()).unwrap_or_default())
    }

    /// Activate at `sample_rate` for blocks of up to `max_block` frames, with `layout`, and
    /// start processing.
    pub fn activate(
        &mut self,
        sample_rate: f64,
        max_block: u32,
        layout: Layout,
    ) -> Result<Processor> {
        let config = PluginAudioConfiguration {
            sample_rate,
            min_frames_count: 1,
            max_frames_count: max_block,
        };
        let stopped = self
            .instance
            .activate(|_, _| (), config)
            .map_err(|e| anyhow!("activate: {e:?}"))?;
        let started = stopped
            .start_processing()
            .map_err(|e| anyhow!("start_processing: {e:?}"))?;
        Ok(Processor::new(
            started,
            sample_rate,
            max_block,
            layout.channels(),
        ))
    }

    /// Stop processing and deactivate.
    pub fn deactivate(&mut self, processor: Processor) {
        let stopped = processor.into_inner().stop_processing();
        self.instance.deactivate(stopped);
    }

    /// Open the plugin's editor embedded in the X11 window `parent` (as a Linux DAW does);
    /// returns its size in pixels.
    pub fn open_editor(&mut self, parent: u64) -> Result<(u32, u32)> {
        let gui = self
            .shared(|s| s.gui.get().copied().flatten())
            .context("plugin has no gui extension")?;
        let handle = self.instance.plugin_handle();
        let x11 = GuiConfiguration {
            api_type: GuiApiType::X11,
            is_floating: false,
        };
        ensure_that(
            gui.is_api_supported(&handle, x11),
            "X11 embedding not supported",
        )?;
        gui.create(&handle, x11)
            .map_err(|e| anyhow!("gui create: {e:?}"))?;
        // SAFETY: `parent` is a live X11 window the caller created and keeps until
        // `close_editor`.
        unsafe { gui.set_parent(&handle, Window::from_x11_handle(parent as _)) }
            .map_err(|e| anyhow!("gui set_parent: {e:?}"))?;
        let size = gui.get_size(&handle).context("gui get_size")?;
        gui.show(&handle).map_err(|e| anyhow!("gui show: {e:?}"))?;
        Ok((size.width, size.height))
    }

    /// Hide and destroy the editor.
    pub fn close_editor(&mut self) -> Result<()> {
        let gui = self
            .shared(|s| s.gui.get().copied().flatten())
            .context("plugin has no gui extension")?;
        let handle = self.instance.plugin_handle();
        let _ = gui.hide(&handle);
        gui.destroy(&handle);
        Ok(())
    }

    /// Run the plugin's main-thread callback if it asked for one.
    pub fn pump_main_thread(&mut self) {
        if self.shared(|s| s.callback_requested.swap(false, Ordering::SeqCst)) {
            self.instance.call_on_main_thread_callback();
        }
    }
}

fn ensure_that(ok: bool, what: &str) -> Result<()> {
    if ok { Ok(()) } else { bail!("{what}") }
}

/// nice-plug's CLAP state: a little-endian u64 length, then that many bytes of JSON.
pub fn decode_state(bytes: &[u8]) -> Result<serde_json::Value> {
    anyhow::ensure!(bytes.len() >= 8, "state of {} bytes", bytes.len());
    let (len, json) = bytes.split_at(8);
    let len = u64::from_le_bytes(len.try_into()?);
    anyhow::ensure!(
        len == json.len() as u64,
        "length prefix {len} for {} bytes",
        json.len()
    );
    serde_json::from_slice(json).context("state is JSON")
}

/// The inverse of [`decode_state`].
pub fn encode_state(state: &serde_json::Value) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(state)?;
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    Ok(bytes)
}
