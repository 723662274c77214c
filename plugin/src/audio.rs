//! The audio-thread side: turn the host transport into a [`TransportSnapshot`] per block.
//!
//! Realtime-safe: everything here is plain arithmetic on `Copy` values.

use lockstep_net::bridge::{TimeSignature, TransportSnapshot};
use nice_plug::prelude::Transport;

/// Copy what the host reports about its transport for the block that starts at
/// `block_start_samples` on this instance's running sample clock.
///
/// Positions use nice-plug's accessors, which fill a missing field only from other fields the
/// host reported (e.g. CLAP hosts report seconds and beats; samples = seconds × rate). Nothing is
/// integrated or predicted here.
pub fn snapshot(
    transport: &Transport,
    block_start_samples: u64,
    block_len: u32,
    host_time_ns: u64,
) -> TransportSnapshot {
    let time_sig = match (transport.time_sig_numerator, transport.time_sig_denominator) {
        (Some(numerator), Some(denominator)) => Some(TimeSignature {
            numerator,
            denominator,
        }),
        _ => None,
    };
    TransportSnapshot {
        block_start_samples,
        block_len,
        sample_rate: transport.sample_rate,
        host_time_ns,
        playing: transport.playing,
        recording: transport.recording,
        preroll_active: transport.preroll_active,
        tempo_bpm: transport.tempo,
        time_sig,
        pos_samples: transport.pos_samples(),
        pos_seconds: transport.pos_seconds(),
        pos_beats: transport.pos_beats(),
        bar_start_beats: transport.bar_start_pos_beats(),
        bar_number: transport.bar_number(),
        loop_range_samples: transport.loop_range_samples(),
        loop_range_beats: transport.loop_range_beats(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_reported_fields_and_derives_samples_from_seconds() {
        let mut transport = Transport::new(48_000.0);
        transport.playing = true;
        transport.tempo = Some(120.0);
        transport.time_sig_numerator = Some(7);
        transport.time_sig_denominator = Some(8);
        transport.pos_seconds = Some(2.0);
        transport.pos_beats = Some(4.0);
        let s = snapshot(&transport, 1024, 64, 99);
        assert_eq!(s.block_start_samples, 1024);
        assert_eq!(s.block_len, 64);
        assert_eq!(s.host_time_ns, 99);
        assert!(s.playing);
        assert_eq!(s.tempo_bpm, Some(120.0));
        assert_eq!(
            s.time_sig,
            Some(TimeSignature {
                numerator: 7,
                denominator: 8
            })
        );
        assert_eq!(s.pos_samples, Some(96_000));
        assert_eq!(s.pos_beats, Some(4.0));
    }

    #[test]
    fn missing_fields_stay_missing() {
        let s = snapshot(&Transport::new(44_100.0), 0, 1, 0);
        assert!(!s.playing);
        assert_eq!(s.tempo_bpm, None);
        assert_eq!(s.pos_beats, None);
        assert_eq!(s.time_sig, None);
    }
}
