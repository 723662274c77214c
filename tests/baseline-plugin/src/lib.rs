//! The bench baseline: the same framework, layouts and host as Lockstep, and a `process()` that
//! does nothing. `cargo xtask bench` runs both through the same headless host in the same run,
//! so the difference is exactly what Lockstep's own work costs per block.

use std::sync::Arc;

use nice_plug::prelude::*;

/// The do-nothing plugin.
#[derive(Default)]
pub struct Baseline {
    params: Arc<BaselineParams>,
}

/// No parameters.
#[derive(Params, Default)]
pub struct BaselineParams {}

impl Plugin for Baseline {
    const NAME: &'static str = "Lockstep Bench Baseline";
    const VENDOR: &'static str = "Lockstep";
    const URL: &'static str = "";
    const EMAIL: &'static str = "";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[AudioIOLayout {
        main_input_channels: NonZeroU32::new(2),
        main_output_channels: NonZeroU32::new(2),
        ..AudioIOLayout::const_default()
    }];
    type Editor = ();
    type SysExMessage = ();
    type BackgroundTask = ();

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn process(
        &mut self,
        _buffer: &mut Buffer,
        _aux: &mut AuxiliaryBuffers,
        _context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        ProcessStatus::KeepAlive
    }
}

impl ClapPlugin for Baseline {
    const CLAP_ID: &'static str = "dev.lockstep.bench-baseline";
    const CLAP_DESCRIPTION: Option<&'static str> = None;
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[ClapFeature::AudioEffect];
}

nice_export_clap!(Baseline);
