//! The plugin as a host first meets it: descriptor and features, the frozen parameter set,
//! state save/load round trip, and the VST3 bundle's layout and exports.

use anyhow::{Context, Result, ensure};
use lockstep_host::bundle::{Build, target_dir};
use lockstep_host::harness::{check_vst3_module, clap_param_id, exclusive};
use lockstep_host::host::Layout;
use lockstep_host::host::{Bundle, decode_state, encode_state};
use lockstep_host::processor::ParamChange;

/// The frozen parameter set as CLAP hosts see it: (string id, name, group, min, max, default).
/// nice-plug shows continuous parameters to CLAP hosts normalised to 0..1 (Clock Offset:
/// -250..250 ms is 0..1, 0 ms is 0.5) and stepped ones (on/off, enums, integers) in plain
/// steps. Values travel as f32 inside nice-plug, so they compare within 1e-6. Changing a row here breaks users' projects; add rows, never edit them.
fn frozen_params() -> Vec<(String, String, &'static str, f64, f64, f64)> {
    let mut rows: Vec<(String, String, &str, f64, f64, f64)> = [
        ("clk_on", "Clock Out", 0.0, 1.0, 1.0),
        ("clk_ofs", "Clock Offset", 0.0, 1.0, 0.5),
        ("clk_tr", "Send Transport", 0.0, 1.0, 1.0),
        ("rtp_on", "RTP-MIDI", 0.0, 1.0, 1.0),
        ("osc_on", "OSC Control", 0.0, 1.0, 1.0),
        ("osc_fb", "OSC Feedback", 0.0, 1.0, 1.0),
        ("lnk_md", "Link Mode", 0.0, 2.0, 0.0),
        // Integers are shown as steps from their minimum: 1..16 beats is 0..15, 4 beats is 3.
        ("lnk_q", "Link Quantum", 0.0, 15.0, 3.0),
        ("lnk_ss", "Link Start/Stop", 0.0, 1.0, 1.0),
    ]
    .into_iter()
    .map(|(id, name, min, max, default)| (id.to_owned(), name.to_owned(), "", min, max, default))
    .collect();
    for i in 1..=16 {
        rows.push((
            format!("mac_{i}"),
            format!("Macro {i}"),
            "Macros",
            0.0,
            1.0,
            0.0,
        ));
    }
    // The host's bypass switch (added after the macros; flagged as bypass to hosts).
    rows.push(("bypass".into(), "Bypass".into(), "", 0.0, 1.0, 0.0));
    rows
}

/// Equal within nice-plug's f32 precision.
fn same(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6
}

#[test]
fn descriptor_and_features() -> Result<()> {
    for build in Build::ALL {
        let bundle = Bundle::load(&build.clap_path())?;
        let descriptors = bundle.descriptors()?;
        ensure!(descriptors.len() == 1, "{descriptors:?}");
        let (id, name, features) = &descriptors[0];
        ensure!(id == "dev.lockstep.lockstep", "{id}");
        ensure!(name == "Lockstep", "{name}");
        for wanted in ["audio-effect", "utility", "stereo", "mono"] {
            ensure!(
                features.iter().any(|f| f == wanted),
                "{wanted} missing in {features:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn parameter_set_is_frozen() -> Result<()> {
    let _guard = exclusive();
    for build in Build::ALL {
        let bundle = Bundle::load(&build.clap_path())?;
        let mut instance = bundle.instantiate()?;
        let params = instance.params()?;
        let expected = frozen_params();
        ensure!(
            params.len() == expected.len(),
            "{} params: {params:#?}",
            params.len()
        );
        for (param, (sid, name, group, min, max, default)) in params.iter().zip(&expected) {
            ensure!(
                param.id == clap_param_id(sid),
                "{sid}: id {} != {}",
                param.id,
                clap_param_id(sid)
            );
            ensure!(&param.name == name, "{sid}: name {}", param.name);
            ensure!(param.module == *group, "{sid}: group {}", param.module);
            ensure!(
                (param.min, param.max) == (*min, *max) && same(param.default, *default),
                "{sid}: range {param:?}"
            );
            ensure!(
                same(instance.param_value(param.id)?, *default),
                "{sid}: initial value"
            );
        }
    }
    Ok(())
}

#[test]
fn state_round_trips_parameters_and_settings() -> Result<()> {
    let _guard = exclusive();
    for build in Build::ALL {
        let bundle = Bundle::load(&build.clap_path())?;
        let mut first = bundle.instantiate()?;
        // Change parameters the way a host does: value events inside a processed block.
        let mut processor = first.activate(48_000.0, 64, Layout::Stereo)?;
        let changes = [
            // -12.5 ms, normalised over -250..250 ms.
            ParamChange {
                offset: 0,
                id: clap_param_id("clk_ofs"),
                value: 0.475,
            },
            ParamChange {
                offset: 10,
                id: clap_param_id("lnk_md"),
                value: 2.0,
            },
            // 7 beats.
            ParamChange {
                offset: 20,
                id: clap_param_id("lnk_q"),
                value: 6.0,
            },
            ParamChange {
                offset: 63,
                id: clap_param_id("mac_3"),
                value: 0.75,
            },
            ParamChange {
                offset: 63,
                id: clap_param_id("clk_tr"),
                value: 0.0,
            },
        ];
        processor.process(64, None, &changes)?;
        first.deactivate(processor);
        for change in &changes {
            ensure!(
                same(first.param_value(change.id)?, change.value),
                "{change:?} not applied"
            );
        }

        // Edit the persistent settings inside the saved state, as a later editor would, and
        // check they survive a load into a fresh instance.
        let mut state = decode_state(&first.save_state()?)?;
        let net_text = state["fields"]["net"]
            .as_str()
            .context("net field")?
            .to_owned();
        let mut net: serde_json::Value = serde_json::from_str(&net_text)?;
        net["osc_port"] = 7777.into();
        net["session_name"] = "Studio B".into();
        net["macro_names"][2] = "Filter".into();
        state["fields"]["net"] = serde_json::to_string(&net)?.into();
        let edited = encode_state(&state)?;

        let mut second = bundle.instantiate()?;
        second.load_state(&edited)?;
        for change in &changes {
            ensure!(
                same(second.param_value(change.id)?, change.value),
                "{change:?} lost"
            );
        }
        let resaved = decode_state(&second.save_state()?)?;
        let net_again: serde_json::Value =
            serde_json::from_str(resaved["fields"]["net"].as_str().context("net")?)?;
        ensure!(net_again["osc_port"] == 7777, "{net_again}");
        ensure!(net_again["session_name"] == "Studio B", "{net_again}");
        ensure!(net_again["macro_names"][2] == "Filter", "{net_again}");

        // Garbage is refused, and refused cleanly: the instance keeps its state.
        ensure!(
            second.load_state(b"not a state").is_err(),
            "garbage state accepted"
        );
        ensure!(
            same(second.param_value(clap_param_id("mac_3"))?, 0.75),
            "state lost after bad load"
        );
    }
    Ok(())
}

#[test]
fn vst3_bundle_has_the_module_exports() -> Result<()> {
    check_vst3_module(&target_dir().join("bundled/Lockstep.vst3"))
}
