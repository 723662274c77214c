//! Command-line parsing for the headless runner. Scripts rely on these flags; keep them stable.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use lockstep_net::settings::{AccessMode, PeerSettings};

use crate::bundle::Build;
use crate::runner::RunConfig;

/// Usage text.
pub const USAGE: &str = "\
lockstep-headless: run the built Lockstep.clap with no DAW and no display

usage: cargo xtask run -- [options]

  --tempo BPM          tempo, 20..999 (default 120)
  --timesig N/D        time signature, N 1..32, D one of 1 2 4 8 16 32 (default 4/4)
  --stopped            start with the transport stopped (default: playing from bar 1)
  --sample-rate HZ     8000..384000 (default 48000)
  --block SAMPLES      block size, 1..8192 (default 256)
  --for SECONDS        exit after this long (default: run until Ctrl+C)
  --status-json        print one JSON status object per second instead of a status line
  --peer [NAME@]HOST:PORT
                       an AppleMIDI peer to invite (repeatable; HOST an IP address or a
                       host name, resolved in the background; PORT its control port);
                       saved in the plugin's settings like a DAW would
  --aligned-peer [NAME@]HOST:PORT
                       the same, aligned to its measured latency: its clock is sent half
                       the measured round trip early, so a peer across the internet plays
                       on the beat (repeatable)
  --link off|lead|follow
                       Ableton Link mode (default off; lead = the DAW leads the session)
  --quantum N          Link quantum, 1..16 beats (default 4)
  --link-interface IF  the interfaces Link runs on: names (eth0) or IPv4 addresses, comma
                       separated, or all (default: the one the system routes Link's
                       multicast group through)
  --osc-port N         our OSC control port (default 8000)
  --osc-preset FILE    controller mappings to load (e.g. presets/osc/touchosc-simple.json)
  --osc-allow LIST     who may send OSC: addresses or subnets, comma separated
                       (192.168.1.0/24,10.0.0.7; default loopback, private, link-local)
  --osc-expose LIST    switches OSC may set besides macros and musical settings, comma
                       separated (clk_on,clk_tr,rtp_on,osc_fb,lnk_md,lnk_ss; osc_on never)
  --osc-rate N         OSC messages a second per source, 1..10000000 (default 500)
  --oscquery-lan       serve OSCQuery to the LAN (default loopback only)
  --no-journal         send no recovery journal (to --peer peers and to guests)
  --no-mdns            do not advertise over mDNS (Bonjour) or browse for peers
  --rtpmidi-port N     our AppleMIDI control port (data = N + 1; default 5004)
  --rtpmidi-access anyone|directory|nobody
                       who may invite Lockstep (default anyone)
  --max-guests N       most peers in session with us on their invitation, 1..1024
                       (default 32)
  --remote CODE        join the remote session with this code (<room>-<secret>, as
                       every studio types it); needs --broker
  --broker HOST:PORT   the MQTT broker the remote session meets through
  --stun HOST:PORT     a STUN server (finds our public address for a direct path)
  --turn HOST:PORT     a TURN server (relays when no direct path works), with
  --turn-user USER --turn-pass PASS   its credentials, or
  --turn-secret SECRET coturn's REST shared secret (use-auth-secret)
  --remote-align MS    play the shared beat grid MS later here, 0..2000 (0: at the
                       same moment as every studio; an audio link's latency: in time
                       with the remote audio heard here)
  --plugin PATH        the .clap file to load (default target/bundled/Lockstep.clap)
  -h, --help           this text
";

/// A command line the runner cannot use.
#[derive(Debug, Error, PartialEq)]
pub enum CliError {
    /// `--help` was asked for.
    #[error("{USAGE}")]
    Help,
    /// An option that does not exist.
    #[error("unknown option `{0}` (see --help)")]
    Unknown(String),
    /// An option without its value.
    #[error("`{0}` needs a value (see --help)")]
    MissingValue(&'static str),
    /// A value that does not parse or is out of range.
    #[error("`{flag} {value}`: {why}")]
    Invalid {
        /// The option.
        flag: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        why: &'static str,
    },
}

fn number<T: std::str::FromStr + PartialOrd>(
    flag: &'static str,
    value: &str,
    min: T,
    max: T,
    why: &'static str,
) -> Result<T, CliError> {
    match value.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(CliError::Invalid {
            flag,
            value: value.to_owned(),
            why,
        }),
    }
}

fn time_sig(value: &str) -> Result<(u16, u16), CliError> {
    let invalid = || CliError::Invalid {
        flag: "--timesig",
        value: value.to_owned(),
        why: "expected N/D with N in 1..32 and D in 1, 2, 4, 8, 16, 32",
    };
    let (n, d) = value.split_once('/').ok_or_else(invalid)?;
    let n: u16 = n.trim().parse().map_err(|_| invalid())?;
    let d: u16 = d.trim().parse().map_err(|_| invalid())?;
    if !(1..=32).contains(&n) || !d.is_power_of_two() || d > 32 {
        return Err(invalid());
    }
    Ok((n, d))
}

/// `[NAME@]HOST:PORT` → a peer for the settings.
fn peer(flag: &'static str, value: &str) -> Result<PeerSettings, CliError> {
    let invalid = || CliError::Invalid {
        flag,
        value: value.to_owned(),
        why: "expected [NAME@]HOST:PORT with HOST an IP address or host name",
    };
    let (name, address) = value.rsplit_once('@').unwrap_or(("", value));
    let (host, port) = match address.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => {
            let (host, port) = address.rsplit_once(':').ok_or_else(invalid)?;
            let port: u16 = port.parse().map_err(|_| invalid())?;
            let valid_name = !host.is_empty()
                && host.len() <= 253
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
            if !valid_name || port == 0 {
                return Err(invalid());
            }
            (host.to_owned(), port)
        }
    };
    Ok(PeerSettings {
        name: if name.is_empty() {
            address.to_owned()
        } else {
            name.to_owned()
        },
        host,
        port,
        ..PeerSettings::default()
    })
}

/// Parse the runner's arguments (without the program name).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<RunConfig, CliError> {
    let mut config = RunConfig {
        plugin: Build::Release.clap_path(),
        tempo_bpm: 120.0,
        time_sig: (4, 4),
        playing: true,
        sample_rate: 48_000.0,
        block: 256,
        duration: None,
        status_json: false,
        peers: Vec::new(),
        rtpmidi_port: None,
        rtpmidi_access: None,
        journal: true,
        mdns: true,
        osc_port: None,
        osc_mappings: Vec::new(),
        osc_allow: None,
        osc_expose: Vec::new(),
        osc_rate: None,
        oscquery_lan: false,
        max_guests: None,
        link: None,
        quantum: None,
        link_interface: None,
        remote: lockstep_net::settings::RemoteSettings::default(),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &'static str| args.next().ok_or(CliError::MissingValue(flag));
        match arg.as_str() {
            "-h" | "--help" => return Err(CliError::Help),
            "--tempo" => {
                config.tempo_bpm = number(
                    "--tempo",
                    &value("--tempo")?,
                    20.0,
                    999.0,
                    "tempo is 20..999 BPM",
                )?;
            }
            "--timesig" => config.time_sig = time_sig(&value("--timesig")?)?,
            "--stopped" => config.playing = false,
            "--sample-rate" => {
                config.sample_rate = number(
                    "--sample-rate",
                    &value("--sample-rate")?,
                    8_000.0,
                    384_000.0,
                    "sample rate is 8000..384000 Hz",
                )?;
            }
            "--block" => {
                config.block = number(
                    "--block",
                    &value("--block")?,
                    1,
                    8192,
                    "block size is 1..8192 samples",
                )?;
            }
            "--for" => {
                let seconds: f64 = number(
                    "--for",
                    &value("--for")?,
                    0.001,
                    31_536_000.0,
                    "duration is a positive number of seconds",
                )?;
                config.duration = Some(Duration::from_secs_f64(seconds));
            }
            "--status-json" => config.status_json = true,
            "--peer" => config.peers.push(peer("--peer", &value("--peer")?)?),
            "--aligned-peer" => config.peers.push(PeerSettings {
                align: true,
                ..peer("--aligned-peer", &value("--aligned-peer")?)?
            }),
            "--no-journal" => config.journal = false,
            "--osc-preset" => {
                let path = value("--osc-preset")?;
                let text = std::fs::read_to_string(&path).map_err(|e| CliError::Invalid {
                    flag: "--osc-preset",
                    value: path.clone(),
                    why: if e.kind() == std::io::ErrorKind::NotFound {
                        "no such file"
                    } else {
                        "cannot read it"
                    },
                })?;
                let preset: lockstep_net::settings::OscPreset = serde_json::from_str(&text)
                    .map_err(|_| CliError::Invalid {
                        flag: "--osc-preset",
                        value: path,
                        why: "not a Lockstep OSC preset (name, mappings: [...])",
                    })?;
                config.osc_mappings.extend(preset.mappings);
            }
            "--osc-port" => {
                config.osc_port = Some(number(
                    "--osc-port",
                    &value("--osc-port")?,
                    1,
                    65_535,
                    "port is 1..65535",
                )?);
            }
            "--no-mdns" => config.mdns = false,
            "--link" => {
                let v = value("--link")?;
                config.link = Some(match v.as_str() {
                    "off" => 0,
                    "lead" => 1,
                    "follow" => 2,
                    _ => {
                        return Err(CliError::Invalid {
                            flag: "--link",
                            value: v,
                            why: "expected off, lead or follow",
                        });
                    }
                });
            }
            "--link-interface" => config.link_interface = Some(value("--link-interface")?),
            "--quantum" => {
                config.quantum = Some(number(
                    "--quantum",
                    &value("--quantum")?,
                    1,
                    16,
                    "quantum is 1..16 beats",
                )?);
            }
            "--rtpmidi-access" => {
                let v = value("--rtpmidi-access")?;
                config.rtpmidi_access = Some(match v.as_str() {
                    "anyone" => AccessMode::Anyone,
                    "directory" => AccessMode::Directory,
                    "nobody" => AccessMode::Nobody,
                    _ => {
                        return Err(CliError::Invalid {
                            flag: "--rtpmidi-access",
                            value: v,
                            why: "expected anyone, directory or nobody",
                        });
                    }
                });
            }
            "--rtpmidi-port" => {
                config.rtpmidi_port = Some(number(
                    "--rtpmidi-port",
                    &value("--rtpmidi-port")?,
                    1,
                    65_534,
                    "port is 1..65534 (the data port is N + 1)",
                )?);
            }
            "--osc-allow" => {
                let v = value("--osc-allow")?;
                let entries: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect();
                if entries.is_empty()
                    || entries
                        .iter()
                        .any(|e| lockstep_net::worker::osc::Subnet::parse(e).is_none())
                {
                    return Err(CliError::Invalid {
                        flag: "--osc-allow",
                        value: v,
                        why: "give addresses or subnets, comma separated (10.0.0.0/8,::1)",
                    });
                }
                config.osc_allow = Some(entries);
            }
            "--osc-expose" => {
                let v = value("--osc-expose")?;
                const OPEN: [&str; 6] =
                    ["clk_on", "clk_tr", "rtp_on", "osc_fb", "lnk_md", "lnk_ss"];
                let ids: Vec<String> = v.split(',').map(|e| e.trim().to_owned()).collect();
                if ids.iter().any(|id| !OPEN.contains(&id.as_str())) {
                    return Err(CliError::Invalid {
                        flag: "--osc-expose",
                        value: v,
                        why: "one or more of clk_on, clk_tr, rtp_on, osc_fb, lnk_md, lnk_ss",
                    });
                }
                config.osc_expose = ids;
            }
            "--osc-rate" => {
                config.osc_rate = Some(number(
                    "--osc-rate",
                    &value("--osc-rate")?,
                    1.0,
                    1e7,
                    "messages a second, 1..10000000",
                )?);
            }
            "--oscquery-lan" => config.oscquery_lan = true,
            "--max-guests" => {
                config.max_guests = Some(number(
                    "--max-guests",
                    &value("--max-guests")?,
                    1,
                    1024,
                    "guests, 1..1024",
                )?);
            }
            "--remote" => {
                let code = value("--remote")?;
                lockstep_net::proto::remote::code::SessionCode::parse(&code).map_err(|e| {
                    CliError::Invalid {
                        flag: "--remote",
                        value: code.clone(),
                        why: code_why(e),
                    }
                })?;
                config.remote.code = code;
            }
            "--broker" => config.remote.broker = endpoint("--broker", &value("--broker")?)?,
            "--stun" => config.remote.stun = endpoint("--stun", &value("--stun")?)?,
            "--turn" => config.remote.turn = endpoint("--turn", &value("--turn")?)?,
            "--turn-user" => config.remote.turn_user = value("--turn-user")?,
            "--turn-pass" => config.remote.turn_pass = value("--turn-pass")?,
            "--turn-secret" => config.remote.turn_secret = value("--turn-secret")?,
            "--remote-align" => {
                config.remote.align_ms = number(
                    "--remote-align",
                    &value("--remote-align")?,
                    0,
                    lockstep_net::settings::MAX_ALIGN_MS,
                    "alignment is 0..2000 ms",
                )?;
            }
            "--plugin" => config.plugin = PathBuf::from(value("--plugin")?),
            other => return Err(CliError::Unknown(other.to_owned())),
        }
    }
    if !config.remote.code.is_empty() && config.remote.broker.is_empty() {
        return Err(CliError::Invalid {
            flag: "--remote",
            value: config.remote.code.clone(),
            why: "a remote session needs --broker HOST:PORT to meet through",
        });
    }
    Ok(config)
}

/// Why a session code was refused, for the user.
fn code_why(error: lockstep_net::proto::remote::code::CodeError) -> &'static str {
    use lockstep_net::proto::remote::code::CodeError;
    match error {
        CodeError::WeakSecret { .. } => {
            "the secret after the room is too easy to guess (needs about 50 bits or more)"
        }
        CodeError::BadRoom => "the room (before the first dash) must be 1 to 4 digits",
        CodeError::InvalidChar(_) => "only letters, digits, spaces and dashes",
        CodeError::TooLong => "too long for a session code",
        CodeError::Empty | CodeError::NoSecret => "expected <room>-<secret>",
    }
}

/// `HOST:PORT` with a port above 0 (HOST a name or an address).
fn endpoint(flag: &'static str, value: &str) -> Result<String, CliError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(CliError::Invalid {
            flag,
            value: value.to_owned(),
            why: "expected HOST:PORT",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_the_access_flags() {
        let c = parse(args(&[
            "--osc-allow",
            "198.51.100.0/24, ::1",
            "--osc-expose",
            "clk_on,lnk_md",
            "--osc-rate",
            "100000",
            "--oscquery-lan",
            "--max-guests",
            "4",
        ]))
        .expect("valid");
        assert_eq!(
            c.osc_allow,
            Some(vec!["198.51.100.0/24".to_owned(), "::1".to_owned()])
        );
        assert_eq!(c.osc_expose, ["clk_on", "lnk_md"]);
        assert_eq!(
            (c.osc_rate, c.oscquery_lan, c.max_guests),
            (Some(1e5), true, Some(4))
        );
        for bad in [
            &["--osc-allow", "studio"][..],
            &["--osc-allow", ","],
            &["--osc-expose", "osc_on"],
            &["--osc-rate", "0"],
            &["--max-guests", "0"],
        ] {
            assert!(
                matches!(parse(args(bad)), Err(CliError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_every_flag() {
        let c = parse(args(&[
            "--tempo",
            "174.5",
            "--timesig",
            "7/8",
            "--stopped",
            "--sample-rate",
            "96000",
            "--block",
            "64",
            "--for",
            "2.5",
            "--status-json",
            "--plugin",
            "/x/L.clap",
        ]))
        .expect("valid");
        assert_eq!(c.tempo_bpm, 174.5);
        assert_eq!(c.time_sig, (7, 8));
        assert!(!c.playing);
        assert_eq!(c.sample_rate, 96_000.0);
        assert_eq!(c.block, 64);
        assert_eq!(c.duration, Some(Duration::from_millis(2500)));
        assert!(c.status_json);
        assert_eq!(c.plugin, PathBuf::from("/x/L.clap"));
        let c = parse(args(&[
            "--peer",
            "Studio B@127.0.0.1:6004",
            "--peer",
            "127.0.0.1:7004",
            "--rtpmidi-port",
            "5010",
        ]))
        .expect("valid");
        assert_eq!(c.peers.len(), 2);
        assert_eq!(
            (c.peers[0].name.as_str(), c.peers[0].port),
            ("Studio B", 6004)
        );
        assert_eq!(c.peers[1].name, "127.0.0.1:7004");
        assert!(!c.peers[0].align && !c.peers[1].align);
        assert_eq!(c.rtpmidi_port, Some(5010));
        let c = parse(args(&["--aligned-peer", "Far@198.51.100.12:5004"])).expect("valid");
        assert_eq!(
            (c.peers[0].name.as_str(), c.peers[0].port, c.peers[0].align),
            ("Far", 5004, true)
        );
        let c = parse(args(&["--rtpmidi-access", "directory"])).expect("valid");
        assert_eq!(c.rtpmidi_access, Some(AccessMode::Directory));
        assert!(parse(args(&["--rtpmidi-access", "friends"])).is_err());
        assert!(matches!(
            parse(args(&["--peer", "nohost"])),
            Err(CliError::Invalid { flag: "--peer", .. })
        ));
        // Host names are kept for the worker to resolve; IPv6 works in brackets.
        let c = parse(args(&[
            "--peer",
            "B@studio-b.local:5004",
            "--peer",
            "[::1]:5008",
            "--no-journal",
            "--no-mdns",
            "--osc-port",
            "8010",
        ]))
        .expect("valid");
        assert_eq!(c.osc_port, Some(8010));
        let l = parse(args(&["--link", "lead", "--quantum", "8"])).expect("valid");
        assert_eq!((l.link, l.quantum), (Some(1), Some(8)));
        let l = parse(args(&["--link", "follow", "--link-interface", "lo"])).expect("valid");
        assert_eq!((l.link, l.link_interface.as_deref()), (Some(2), Some("lo")));
        assert!(parse(args(&["--link", "chase"])).is_err());
        assert!(parse(args(&["--quantum", "17"])).is_err());
        let preset = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../presets/osc/touchosc-simple.json"
        );
        let p = parse(args(&["--osc-preset", preset])).expect("valid");
        assert_eq!(p.osc_mappings[0].address, "/1/fader1");
        assert!(parse(args(&["--osc-preset", "/no/such.json"])).is_err());
        assert!(parse(args(&["--osc-preset", file!()])).is_err(), "not JSON");
        assert_eq!(
            (c.peers[0].host.as_str(), c.peers[0].port),
            ("studio-b.local", 5004)
        );
        assert_eq!((c.peers[1].host.as_str(), c.peers[1].port), ("::1", 5008));
        assert!(!c.journal && !c.mdns);
        for bad in ["bad host:5004", "host:0", ":5004", "host:99999"] {
            assert!(parse(args(&["--peer", bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_values_clearly() {
        assert!(matches!(
            parse(args(&["--tempo", "1000"])),
            Err(CliError::Invalid {
                flag: "--tempo",
                ..
            })
        ));
        assert!(matches!(
            parse(args(&["--timesig", "4/3"])),
            Err(CliError::Invalid {
                flag: "--timesig",
                ..
            })
        ));
        assert!(matches!(
            parse(args(&["--block", "0"])),
            Err(CliError::Invalid {
                flag: "--block",
                ..
            })
        ));
        assert_eq!(
            parse(args(&["--block"])),
            Err(CliError::MissingValue("--block"))
        );
        assert_eq!(
            parse(args(&["--tempo=120"])),
            Err(CliError::Unknown("--tempo=120".into()))
        );
    }

    #[test]
    fn remote_session_flags() {
        let c = parse(args(&[
            "--remote",
            "4817-7KQ3-M2XP-9FTR-HW4D",
            "--broker",
            "198.51.100.2:1883",
            "--stun",
            "198.51.100.2:3478",
            "--turn",
            "turn.example:3478",
            "--turn-secret",
            "s3cret",
            "--remote-align",
            "35",
        ]))
        .expect("valid");
        assert_eq!(c.remote.align_ms, 35);
        assert!(parse(args(&["--remote-align", "2001"])).is_err());
        assert_eq!(c.remote.code, "4817-7KQ3-M2XP-9FTR-HW4D");
        assert_eq!(c.remote.broker, "198.51.100.2:1883");
        assert_eq!(c.remote.stun, "198.51.100.2:3478");
        assert_eq!(c.remote.turn, "turn.example:3478");
        assert_eq!(c.remote.turn_secret, "s3cret");
        // A code needs a broker; a weak secret and a bad address are refused, with the flag.
        assert!(matches!(
            parse(args(&["--remote", "4817-7KQ3-M2XP-9FTR-HW4D"])),
            Err(CliError::Invalid {
                flag: "--remote",
                ..
            })
        ));
        assert!(matches!(
            parse(args(&["--remote", "12-cat", "--broker", "b:1883"])),
            Err(CliError::Invalid {
                flag: "--remote",
                ..
            })
        ));
        assert!(matches!(
            parse(args(&["--stun", "nohost"])),
            Err(CliError::Invalid { flag: "--stun", .. })
        ));
        assert!(matches!(
            parse(args(&["--broker", "b:0"])),
            Err(CliError::Invalid {
                flag: "--broker",
                ..
            })
        ));
    }
}
