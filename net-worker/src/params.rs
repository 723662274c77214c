//! What the worker knows about the plugin's parameters, so remote control (OSC) can address
//! them by id, in their real units, and hand the host values in the form the plugin format
//! expects. The plugin describes its parameters once at activation; values flow as
//! normalized 0..1 numbers.

use serde::{Deserialize, Serialize};

/// The kind and range of one parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ParamKind {
    /// Continuous, linear from `min` to `max` in `unit`.
    Float {
        /// Lowest value.
        min: f64,
        /// Highest value.
        max: f64,
        /// Unit text (" ms"), may be empty.
        unit: String,
    },
    /// Whole numbers from `min` to `max`.
    Int {
        /// Lowest value.
        min: i64,
        /// Highest value.
        max: i64,
    },
    /// Off / on.
    Bool,
    /// One of `names` (index 0 first).
    Enum {
        /// Variant names as the host shows them.
        names: Vec<String>,
    },
}

/// What remote control (OSC) may do with a parameter. Reading (dump, feedback, OSCQuery) is
/// always allowed; this is about setting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Remote {
    /// Settable remotely (macros and musical settings).
    #[default]
    Open,
    /// Settable only when the user opens it (settings `osc_expose`, or a mapping of theirs):
    /// switches that turn an output or a feed off.
    OptIn,
    /// Never settable remotely: the switch that enables remote control itself, so no sender can
    /// lock the user's own controllers out.
    Never,
}

/// One parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Stable id (`mac_1`, `clk_ofs`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Kind and range.
    pub kind: ParamKind,
    /// The CLAP parameter id the host knows it by.
    pub clap_id: u32,
    /// Default, normalized.
    pub default: f64,
    /// What remote control may do with it.
    #[serde(default)]
    pub remote: Remote,
}

/// Why a value cannot be set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Outside the parameter's range (the text says which).
    OutOfRange(String),
    /// Not a value of this parameter's type.
    WrongType(String),
}

impl ParamSpec {
    /// Number of steps for discrete parameters (`None` for continuous ones).
    pub fn steps(&self) -> Option<u32> {
        match &self.kind {
            ParamKind::Float { .. } => None,
            ParamKind::Int { min, max } => Some((max - min).max(0) as u32),
            ParamKind::Bool => Some(1),
            ParamKind::Enum { names } => Some(names.len().saturating_sub(1) as u32),
        }
    }

    /// Normalized 0..1 for a value in real units (rounded to a step for discrete kinds).
    pub fn normalize(&self, plain: f64) -> Result<f64, ValueError> {
        if !plain.is_finite() {
            return Err(ValueError::OutOfRange(format!("{plain} is not a number")));
        }
        let (lo, hi) = self.plain_range();
        if plain < lo - 1e-9 || plain > hi + 1e-9 {
            return Err(ValueError::OutOfRange(format!(
                "{plain} is outside {lo}..{hi}"
            )));
        }
        let plain = match self.steps() {
            Some(_) => plain.round(),
            None => plain,
        };
        Ok(if hi > lo {
            ((plain - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.0
        })
    }

    /// Real units for a normalized value.
    pub fn plain(&self, normalized: f64) -> f64 {
        let (lo, hi) = self.plain_range();
        let v = lo + normalized.clamp(0.0, 1.0) * (hi - lo);
        match self.steps() {
            Some(_) => v.round(),
            None => v,
        }
    }

    /// Real units for a normalized value as remote control shows it: a continuous value is
    /// rounded to a millionth of its range, so a value set in real units reads back as set
    /// (normalized values travel as 32-bit floats: `clk_ofs` 10 would read 9.99999046).
    pub fn shown(&self, normalized: f64) -> f64 {
        let v = self.plain(normalized);
        let (lo, hi) = self.plain_range();
        if self.steps().is_some() || hi <= lo {
            return v;
        }
        let decimals = (6.0 - (hi - lo).log10().ceil()).clamp(0.0, 12.0) as i32;
        let scale = 10f64.powi(decimals);
        (v * scale).round() / scale
    }

    /// The OSC argument that carries a normalized value in real units, of the type OSCQuery
    /// declares for it: `f` for a continuous value, `i` for whole numbers, `T`/`F` for a switch,
    /// `s` (the variant's name) for a choice.
    pub fn osc_value(&self, normalized: f64) -> crate::proto::osc::Arg {
        use crate::proto::osc::Arg;
        match &self.kind {
            ParamKind::Float { .. } => Arg::Float(self.shown(normalized) as f32),
            ParamKind::Int { .. } => Arg::Int(self.plain(normalized) as i32),
            ParamKind::Bool if normalized >= 0.5 => Arg::True,
            ParamKind::Bool => Arg::False,
            ParamKind::Enum { names } => Arg::Str(
                names
                    .get(self.plain(normalized) as usize)
                    .cloned()
                    .unwrap_or_default(),
            ),
        }
    }

    /// Normalized value for an enum variant's name (case-insensitive).
    pub fn normalize_name(&self, name: &str) -> Result<f64, ValueError> {
        match &self.kind {
            ParamKind::Enum { names } => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(name))
                .map(|i| self.normalize(i as f64))
                .unwrap_or_else(|| {
                    Err(ValueError::OutOfRange(format!(
                        "{name:?} is not one of {}",
                        names.join(", ")
                    )))
                }),
            ParamKind::Bool => match name.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => Ok(1.0),
                "off" | "false" | "0" => Ok(0.0),
                _ => Err(ValueError::WrongType(format!("{name:?} is not on/off"))),
            },
            _ => Err(ValueError::WrongType(format!(
                "{} takes a number, not the text {name:?}",
                self.id
            ))),
        }
    }

    /// The value the CLAP host uses for this parameter: nice-plug exposes continuous
    /// parameters as 0..1 and discrete ones as steps from 0.
    pub fn clap_value(&self, normalized: f64) -> f64 {
        match self.steps() {
            None => normalized.clamp(0.0, 1.0),
            Some(steps) => (normalized.clamp(0.0, 1.0) * f64::from(steps)).round(),
        }
    }

    /// The inverse of [`ParamSpec::clap_value`].
    pub fn from_clap_value(&self, value: f64) -> f64 {
        match self.steps() {
            None | Some(0) => value.clamp(0.0, 1.0),
            Some(steps) => (value / f64::from(steps)).clamp(0.0, 1.0),
        }
    }

    fn plain_range(&self) -> (f64, f64) {
        match &self.kind {
            ParamKind::Float { min, max, .. } => (*min, *max),
            ParamKind::Int { min, max } => (*min as f64, *max as f64),
            ParamKind::Bool => (0.0, 1.0),
            ParamKind::Enum { names } => (0.0, names.len().saturating_sub(1) as f64),
        }
    }
}

/// What a plugin instance's host-facing layer counts (audio thread writes, anyone reads).
#[derive(Debug, Default)]
pub struct LayerStats {
    /// Remote changes handed to the plugin.
    pub applied: std::sync::atomic::AtomicU64,
    /// Blocks that took their maximum of remote changes while more waited (those came with
    /// the next block).
    pub deferred: std::sync::atomic::AtomicU64,
    /// Timed changes applied before their sample because the hold was full.
    pub early: std::sync::atomic::AtomicU64,
    /// Blocks whose host events were too many to interleave with ours (ours went first).
    pub unmerged: std::sync::atomic::AtomicU64,
    /// Blocks whose remote changes waited because the layer was entered concurrently (a host
    /// breaking the format's threading rules).
    pub contended: std::sync::atomic::AtomicU64,
}

/// A reading of [`LayerStats`], as the status shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerCounters {
    /// Remote changes handed to the plugin.
    pub applied: u64,
    /// Blocks that deferred remote changes to the next block.
    pub deferred: u64,
    /// Timed changes applied early (hold full).
    pub early: u64,
    /// Blocks that could not interleave remote changes with the host's events.
    pub unmerged: u64,
    /// Blocks whose remote changes waited for a concurrent entry.
    pub contended: u64,
}

impl LayerStats {
    /// Read every counter.
    pub fn load(&self) -> LayerCounters {
        use std::sync::atomic::Ordering::Relaxed;
        LayerCounters {
            applied: self.applied.load(Relaxed),
            deferred: self.deferred.load(Relaxed),
            early: self.early.load(Relaxed),
            unmerged: self.unmerged.load(Relaxed),
            contended: self.contended.load(Relaxed),
        }
    }
}

/// A value for the host: the plugin's host-facing layer (CLAP or VST3) applies it and reports
/// it to the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostParamChange {
    /// CLAP parameter id.
    pub clap_id: u32,
    /// The value in the host's terms ([`ParamSpec::clap_value`]).
    pub value: f64,
    /// The instance's sample clock position (samples since activation) the change belongs
    /// at, for OSC bundles with a future time tag; `None` = as soon as possible.
    pub at_sample: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: ParamKind) -> ParamSpec {
        ParamSpec {
            id: "p".into(),
            name: "P".into(),
            kind,
            clap_id: 1,
            default: 0.0,
            remote: Remote::Open,
        }
    }

    #[test]
    fn conversions() {
        let ofs = spec(ParamKind::Float {
            min: -250.0,
            max: 250.0,
            unit: " ms".into(),
        });
        assert_eq!(ofs.normalize(0.0), Ok(0.5));
        assert_eq!(ofs.plain(0.75), 125.0);
        assert!(matches!(
            ofs.normalize(251.0),
            Err(ValueError::OutOfRange(_))
        ));
        assert!(matches!(
            ofs.normalize(f64::NAN),
            Err(ValueError::OutOfRange(_))
        ));
        assert_eq!(ofs.clap_value(0.25), 0.25);
        let q = spec(ParamKind::Int { min: 1, max: 16 });
        assert_eq!(q.normalize(4.4), Ok(3.0 / 15.0));
        assert_eq!(q.plain(3.0 / 15.0), 4.0);
        assert_eq!(q.clap_value(3.0 / 15.0), 3.0);
        assert_eq!(q.from_clap_value(3.0), 3.0 / 15.0);
        let mode = spec(ParamKind::Enum {
            names: vec!["Off".into(), "Lead".into(), "Follow".into()],
        });
        assert_eq!(mode.normalize_name("follow"), Ok(1.0));
        assert!(mode.normalize_name("chase").is_err());
        assert_eq!(mode.clap_value(0.5), 1.0);
        // What is set in real units reads back as set, through a 32-bit normalized value.
        let stored = f64::from(ofs.normalize(10.0).expect("in range") as f32);
        assert_eq!(ofs.shown(stored), 10.0);
        assert_eq!(ofs.osc_value(stored), crate::proto::osc::Arg::Float(10.0));
        assert_eq!(
            mode.osc_value(1.0),
            crate::proto::osc::Arg::Str("Follow".into())
        );
        assert_eq!(q.osc_value(3.0 / 15.0), crate::proto::osc::Arg::Int(4));
        let on = spec(ParamKind::Bool);
        assert_eq!(on.osc_value(1.0), crate::proto::osc::Arg::True);
        assert_eq!(on.normalize_name("On"), Ok(1.0));
        assert!(matches!(
            ofs.normalize_name("x"),
            Err(ValueError::WrongType(_))
        ));
    }
}
