//! A minimal pcap writer: UDP datagrams on loopback as raw IPv4 packets (LINKTYPE_RAW), so
//! tshark's dissectors can check the bytes our protocol cores produce, with no socket at all.

use std::path::Path;

use anyhow::{Context, Result};

/// One UDP datagram to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Source port on 127.0.0.1.
    pub from_port: u16,
    /// Destination port on 127.0.0.1.
    pub to_port: u16,
    /// UDP payload.
    pub payload: Vec<u8>,
}

/// Write `datagrams` to a pcap file at `path`, 1 ms apart.
pub fn write(path: &Path, datagrams: &[Datagram]) -> Result<()> {
    let mut out = Vec::new();
    // Global header: magic, version 2.4, zone 0, sigfigs 0, snaplen 65535, LINKTYPE_RAW (101).
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65_535u32.to_le_bytes());
    out.extend_from_slice(&101u32.to_le_bytes());
    for (i, d) in datagrams.iter().enumerate() {
        let udp_len = 8 + d.payload.len();
        let ip_len = 20 + udp_len;
        let mut ip = Vec::with_capacity(ip_len);
        ip.extend_from_slice(&[0x45, 0]);
        ip.extend_from_slice(
            &u16::try_from(ip_len)
                .context("datagram too large")?
                .to_be_bytes(),
        );
        ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        ip.extend_from_slice(&[127, 0, 0, 1, 127, 0, 0, 1]);
        let checksum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        ip.extend_from_slice(&d.from_port.to_be_bytes());
        ip.extend_from_slice(&d.to_port.to_be_bytes());
        ip.extend_from_slice(
            &u16::try_from(udp_len)
                .context("datagram too large")?
                .to_be_bytes(),
        );
        ip.extend_from_slice(&0u16.to_be_bytes()); // no UDP checksum (legal on IPv4)
        ip.extend_from_slice(&d.payload);
        let usec = u32::try_from(i * 1000 % 1_000_000).unwrap_or(0);
        let sec = u32::try_from(i / 1000).unwrap_or(0) + 1_700_000_000;
        out.extend_from_slice(&sec.to_le_bytes());
        out.extend_from_slice(&usec.to_le_bytes());
        let len = u32::try_from(ip.len()).context("record too large")?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&ip);
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// tshark's decoding of `pcap`: one row per frame, one column per field in `fields` (all
/// occurrences of a field joined by commas).
pub fn tshark_fields(pcap: &Path, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    tshark_fields_with(pcap, &[], fields)
}

/// As [`tshark_fields`], with extra tshark options first (e.g. `-d udp.port==8000,osc`).
pub fn tshark_fields_with(
    pcap: &Path,
    options: &[&str],
    fields: &[&str],
) -> Result<Vec<Vec<String>>> {
    let mut cmd = std::process::Command::new("tshark");
    cmd.arg("-r").arg(pcap).args(options).args([
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]);
    for field in fields {
        cmd.args(["-e", field]);
    }
    let out = cmd
        .output()
        .context("tshark is not installed (run `cargo xtask test`)")?;
    anyhow::ensure!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect())
}

/// A live tshark capture on `lo` into `target/<name>`, stopped (SIGINT) by
/// [`Capture::finish`].
pub struct Capture {
    child: std::process::Child,
    path: std::path::PathBuf,
}

impl Capture {
    /// Start capturing what matches the capture `filter`; returns once tshark listens.
    pub fn start(name: &str, filter: &str) -> Result<Self> {
        use std::io::{BufRead, BufReader};
        let path = crate::bundle::target_dir().join(name);
        let _ = std::fs::remove_file(&path);
        let mut child = std::process::Command::new("tshark")
            .args(["-i", "lo", "-f", filter, "-w"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("starting tshark (run `cargo xtask test` to install it)")?;
        // tshark says "Capturing on 'Loopback: lo'" once it listens.
        let stderr = child.stderr.take().context("stderr")?;
        let mut reader = BufReader::new(stderr);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 0 {
            if line.contains("Capturing on") {
                break;
            }
            line.clear();
        }
        anyhow::ensure!(
            line.contains("Capturing on"),
            "tshark did not start capturing: {line}"
        );
        std::thread::spawn(move || for _ in reader.lines() {});
        Ok(Self { child, path })
    }

    /// Stop capturing; returns the file.
    pub fn finish(mut self) -> Result<std::path::PathBuf> {
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::process::Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(self.path.clone())
    }
}
