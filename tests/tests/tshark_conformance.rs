//! tshark's AppleMIDI and RTP-MIDI dissectors as an independent check of the bytes our
//! protocol cores produce: a whole session (invitations on both ports, CK exchange, clock and
//! transport packets with and without a Chapter Q journal, RS, RL, BY) written to a pcap file
//! must decode with the right fields and without a single malformed packet or expert warning.
//!
//! Known tshark defect: its RTP-MIDI dissector defines Chapter Q's T flag as 0x80 (the S bit)
//! instead of RFC 6295 App. B.3's 0x08, so a Chapter Q with S = 1 makes it read three bytes of
//! TIMETOOLS that are not there and report the packet malformed. The journals here use S = 0
//! (as in a packet whose journal covers the previous packet's commands), which tshark reads
//! right; S = 1 encodings are checked against the RFC's own examples in the unit tests.

use anyhow::{Result, ensure};
use lockstep_host::bundle::target_dir;
use lockstep_host::pcap::{self, Datagram};
use lockstep_net::proto::applemidi::{self, Ck, Exchange};
use lockstep_net::proto::rtpmidi::{self, ChapterQ, MidiCommand, RtpHeader, TimedCommand};

const OUR_CTRL: u16 = 5004;
const PEER_CTRL: u16 = 6004;

fn command(c: &applemidi::Command, from: u16, to: u16) -> Datagram {
    let mut payload = Vec::new();
    applemidi::encode_into(c, &mut payload);
    Datagram {
        from_port: from,
        to_port: to,
        payload,
    }
}

fn rtp(seq: u16, timestamp: u32, commands: &[TimedCommand], q: Option<ChapterQ>) -> Datagram {
    let header = RtpHeader {
        marker: false,
        payload_type: rtpmidi::PAYLOAD_TYPE,
        seq,
        timestamp,
        ssrc: 0xAABB_CCDD,
    };
    let mut payload = Vec::new();
    rtpmidi::encode(
        &header,
        commands,
        q.map(|q| (false, seq - 2, q)),
        &mut payload,
    );
    Datagram {
        from_port: OUR_CTRL + 1,
        to_port: PEER_CTRL + 1,
        payload,
    }
}

fn at(offset: u32, command: MidiCommand) -> TimedCommand {
    TimedCommand { offset, command }
}

fn session() -> Vec<Datagram> {
    let ours = |name: Option<&str>| Exchange {
        token: 0x1234_5678,
        ssrc: 0xAABB_CCDD,
        name: name.map(str::to_owned),
    };
    let theirs = Exchange {
        token: 0x1234_5678,
        ssrc: 0x1122_3344,
        name: Some("Peer".into()),
    };
    use applemidi::Command as C;
    let clock = MidiCommand::RealTime(0xF8);
    vec![
        command(&C::Invitation(ours(Some("Lockstep"))), OUR_CTRL, PEER_CTRL),
        command(&C::Accepted(theirs.clone()), PEER_CTRL, OUR_CTRL),
        command(
            &C::Invitation(ours(Some("Lockstep"))),
            OUR_CTRL + 1,
            PEER_CTRL + 1,
        ),
        command(&C::Accepted(theirs), PEER_CTRL + 1, OUR_CTRL + 1),
        command(
            &C::Ck(Ck {
                ssrc: 0xAABB_CCDD,
                count: 0,
                timestamps: [10_000, 0, 0],
            }),
            OUR_CTRL + 1,
            PEER_CTRL + 1,
        ),
        command(
            &C::Ck(Ck {
                ssrc: 0x1122_3344,
                count: 1,
                timestamps: [10_000, 5_000_020, 0],
            }),
            PEER_CTRL + 1,
            OUR_CTRL + 1,
        ),
        command(
            &C::Ck(Ck {
                ssrc: 0xAABB_CCDD,
                count: 2,
                timestamps: [10_000, 5_000_020, 10_040],
            }),
            OUR_CTRL + 1,
            PEER_CTRL + 1,
        ),
        rtp(
            0x1234,
            0x0001_0000,
            &[
                at(0, MidiCommand::SongPosition(16)),
                at(0, MidiCommand::RealTime(0xFB)),
            ],
            None,
        ),
        rtp(
            0x1235,
            0x0001_0010,
            &[at(0, clock), at(208, clock), at(417, clock), at(625, clock)],
            None,
        ),
        rtp(
            0x1236,
            0x0001_0300,
            &[at(0, clock)],
            Some(ChapterQ {
                s: false,
                running: true,
                downbeat: true,
                position: Some(96 + 4),
                timetools: None,
            }),
        ),
        rtp(
            0x1237,
            0x0001_0400,
            &[at(0, MidiCommand::RealTime(0xFC))],
            Some(ChapterQ {
                s: false,
                running: false,
                downbeat: true,
                position: Some(101),
                timetools: None,
            }),
        ),
        rtp(0x1238, 0x0001_0500, &[], None),
        rtp(
            0x1239,
            0x0001_0600,
            &[at(0, MidiCommand::RealTime(0xFA)), at(0, clock)],
            Some(ChapterQ {
                s: false,
                running: true,
                downbeat: false,
                position: None,
                timetools: None,
            }),
        ),
        command(
            &C::ReceiverFeedback {
                ssrc: 0x1122_3344,
                seq: 0x1239,
            },
            PEER_CTRL,
            OUR_CTRL,
        ),
        command(
            &C::BitrateLimit {
                ssrc: 0x1122_3344,
                bits_per_second: 31_250,
            },
            PEER_CTRL,
            OUR_CTRL,
        ),
        command(&C::Bye(ours(None)), OUR_CTRL, PEER_CTRL),
    ]
}

#[test]
fn tshark_decodes_a_whole_session_cleanly() -> Result<()> {
    let path = target_dir().join("tshark-conformance.pcap");
    let datagrams = session();
    pcap::write(&path, &datagrams)?;
    let rows = pcap::tshark_fields(
        &path,
        &[
            "frame.protocols",
            "_ws.expert.severity",
            "_ws.malformed",
            "applemidi.command",
            "applemidi.name",
            "applemidi.timestamp3",
            "rtpmidi.song_position_pointer",
            "rtpmidi.sj_chapter_q_clock",
            "rtpmidi.sj_chapter_q_nflag",
            "applemidi.rtp_sequence_number",
            "applemidi.bitrate_limit",
        ],
    )?;
    ensure!(
        rows.len() == datagrams.len(),
        "{} rows: {rows:?}",
        rows.len()
    );
    for (i, row) in rows.iter().enumerate() {
        ensure!(
            row[1].is_empty() && row[2].is_empty(),
            "frame {}: expert/malformed {row:?}",
            i + 1
        );
        let proto = &row[0];
        if (7..=12).contains(&i) {
            ensure!(proto.ends_with("rtp:rtpmidi"), "frame {} is {proto}", i + 1);
        } else {
            ensure!(proto.ends_with("applemidi"), "frame {} is {proto}", i + 1);
        }
    }
    // Spot checks of decoded values.
    ensure!(
        rows[0][3] == "0x494e" && rows[0][4] == "Lockstep",
        "IN: {:?}",
        rows[0]
    );
    let ts3 = u64::from_str_radix(rows[6][5].trim_start_matches("0x"), 16)?;
    ensure!(ts3 == 10_040, "CK2 ts3: {:?}", rows[6]);
    // SPP 16 is `F2 10 00` (LSB first). tshark's field shows the two data bytes as one
    // big-endian 16-bit value masked with 0x7F7F: 0x1000 = 4096.
    ensure!(rows[7][6] == "4096", "SPP: {:?}", rows[7]);
    ensure!(
        rows[9][7] == "100" && rows[9][8] == "1",
        "chapter Q: {:?}",
        rows[9]
    );
    ensure!(rows[13][9] == "4665", "RS seq: {:?}", rows[13]);
    ensure!(rows[14][10] == "31250", "RL: {:?}", rows[14]);
    Ok(())
}

/// Our OSC encoder's output, every type tag and bundle shape, as tshark's OSC dissector reads
/// it (its UDP heuristic switched on): no malformed packet, no expert warning, paths and values
/// as sent.
#[test]
fn tshark_decodes_our_osc_cleanly() -> Result<()> {
    use lockstep_net::proto::osc::{self, Arg, IMMEDIATELY, Message, Packet};
    let m = |address: &str, args: Vec<Arg>| Packet::Message(Message::new(address, args));
    let packets = [
        m("/lockstep/param/mac_1", vec![Arg::Float(0.75)]),
        m(
            "/lockstep/error",
            vec![
                Arg::Str("/lockstep/param/clk_ofs".into()),
                Arg::Str("999 is outside -250..250".into()),
            ],
        ),
        m(
            "/all",
            vec![
                Arg::Int(-7),
                Arg::Long(1 << 40),
                Arg::Double(0.5),
                Arg::Symbol("sym".into()),
                Arg::Blob(vec![1, 2, 3, 4, 5]),
                Arg::True,
                Arg::False,
                Arg::Nil,
                Arg::Impulse,
                Arg::Time(osc::timetag_from_unix(1_700_000_000.5)),
                Arg::Char(u32::from('A')),
                Arg::Color(0xFF00_00FF),
                Arg::Midi([0, 0x90, 0x3C, 0x7F]),
            ],
        ),
        Packet::Bundle {
            time: IMMEDIATELY,
            elements: vec![
                m("/lockstep/param/clk_ofs", vec![Arg::Float(-125.0)]),
                m("/lockstep/param/clk_ofs/normalized", vec![Arg::Float(0.25)]),
                Packet::Bundle {
                    time: osc::timetag_from_unix(1_700_000_001.0),
                    elements: vec![m("/x", vec![])],
                },
            ],
        },
    ];
    let datagrams: Vec<Datagram> = packets
        .iter()
        .map(|p| {
            let mut payload = Vec::new();
            osc::encode(p, &mut payload);
            Datagram {
                from_port: 9000,
                to_port: 8000,
                payload,
            }
        })
        .collect();
    let path = target_dir().join("tshark-osc.pcap");
    pcap::write(&path, &datagrams)?;
    let rows = pcap::tshark_fields_with(
        &path,
        &["--enable-heuristic", "osc_udp"],
        &[
            "frame.protocols",
            "_ws.expert.severity",
            "_ws.malformed",
            "osc.message.header.path",
            "osc.message.float",
            "osc.message.symbol",
            "osc.message.int64",
            "osc.bundle.element.size",
        ],
    )?;
    ensure!(rows.len() == datagrams.len(), "{rows:?}");
    for (i, row) in rows.iter().enumerate() {
        ensure!(row[0].ends_with("osc"), "frame {} is {}", i + 1, row[0]);
        ensure!(
            row[1].is_empty() && row[2].is_empty(),
            "frame {}: expert/malformed {row:?}",
            i + 1
        );
    }
    ensure!(
        rows[0][3] == "/lockstep/param/mac_1" && rows[0][4] == "0.75",
        "{:?}",
        rows[0]
    );
    ensure!(
        rows[2][5] == "sym" && rows[2][6] == "1099511627776",
        "{:?}",
        rows[2]
    );
    ensure!(
        rows[3][3] == "/lockstep/param/clk_ofs,/lockstep/param/clk_ofs/normalized,/x",
        "nested bundle paths: {:?}",
        rows[3]
    );
    Ok(())
}
