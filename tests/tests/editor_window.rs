//! The real editor in a real X11 window: the plugin, loaded by the headless CLAP host, embeds
//! its editor in a window this test creates on the X server `cargo xtask test` starts (Xvfb,
//! inside the test namespace), with a scripted scenario behind it: two RTP-MIDI peers (pymidi,
//! connected; a silent address, not answering), Link with one peer (aalink), OSC traffic. The
//! window is captured to `target/editor-status.png` and must be the editor's size and not
//! blank. Then the editor is opened and closed 100 times while an audio thread keeps calling
//! `process()`: no thread is left behind, memory does not grow, and `process()` keeps running.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lockstep_host::bundle::Build;
use lockstep_host::harness::{ScriptPeer, clap_param_id, exclusive};
use lockstep_host::host::{Bundle, Layout};
use lockstep_host::processor::ParamChange;
use lockstep_host::status::StatusProbe;
use lockstep_host::transport::HostTransport;
use lockstep_net::proto::osc::{self, Arg, Message};
use lockstep_net::settings::PeerSettings;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, CreateWindowAux, ImageFormat, WindowClass};

/// An X11 window for the editor to live in, as a DAW's plugin window.
struct Parent {
    conn: x11rb::rust_connection::RustConnection,
    window: u32,
}

impl Parent {
    fn new(width: u16, height: u16) -> Result<Self> {
        let (conn, screen) = x11rb::connect(None).context(
            "no X server: `cargo xtask test` runs the suite under xvfb-run (set DISPLAY)",
        )?;
        let root = conn.setup().roots[screen].root;
        let window = conn.generate_id()?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            window,
            root,
            0,
            0,
            width,
            height,
            0,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new().background_pixel(0),
        )?;
        conn.map_window(window)?;
        conn.flush()?;
        Ok(Self { conn, window })
    }

    /// The window's pixels (with the editor in it) as RGB.
    fn capture(&self, width: u16, height: u16) -> Result<Vec<u8>> {
        let image = self
            .conn
            .get_image(ImageFormat::Z_PIXMAP, self.window, 0, 0, width, height, !0)?
            .reply()?;
        ensure!(image.depth == 24, "depth {}", image.depth);
        // 32 bits per pixel, BGRX.
        Ok(image
            .data
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect())
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        let _ = self.conn.destroy_window(self.window);
        let _ = self.conn.flush();
    }
}

fn write_png(path: &std::path::Path, width: u32, height: u32, rgb: &[u8]) -> Result<()> {
    let file = std::fs::File::create(path)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(())
}

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count)
}

/// Heap bytes in use right now (glibc's count of live allocations, malloc'd and mmapped:
/// unlike RSS, not inflated by free lists, fragmentation or mapped driver libraries).
fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}

/// Resident memory, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn the_editor_shows_the_scenario_and_opens_and_closes_100_times() -> Result<()> {
    let _guard = exclusive();
    let link = ScriptPeer::spawn("aalink_peer.py", &["124".into(), "1".into(), "60".into()])?;
    let midi = ScriptPeer::spawn("pymidi_peer.py", &["6034".into(), "60".into()])?;
    link.wait("aalink", |l| l.iter().any(|v| v["event"] == "ready"))?;
    midi.wait("pymidi", |l| l.iter().any(|v| v["event"] == "ready"))?;
    // Something that never answers: a bound socket that reads nothing.
    let silent = UdpSocket::bind("127.0.0.1:6044")?;

    let path = Build::Release.clap_path();
    let bundle = Bundle::load(&path)?;
    let probe = StatusProbe::open(&path)?;
    let mut instance = bundle.instantiate()?;
    let mut settings = instance.net_settings()?;
    settings.rtp_midi_port = 5034;
    settings.osc_port = 8034;
    settings.peers = vec![
        PeerSettings {
            name: "Studio B (pymidi)".into(),
            host: "127.0.0.1".into(),
            port: 6034,
            ..PeerSettings::default()
        },
        PeerSettings {
            name: "Studio C".into(),
            host: "127.0.0.1".into(),
            port: 6044,
            ..PeerSettings::default()
        },
    ];
    instance.set_net_settings(&settings)?;
    let mut p = instance.activate(48_000.0, 256, Layout::Stereo)?;
    let mut t = HostTransport::new(124.0, (4, 4));
    t.playing = true;
    let lead = [ParamChange {
        offset: 0,
        id: clap_param_id("lnk_md"),
        value: 1.0,
    }];
    p.process(256, Some(&t.event()), &lead)?;

    // The audio thread: paced blocks until told to stop; the longest process() call.
    let stop = Arc::new(AtomicBool::new(false));
    let blocks = Arc::new(AtomicU64::new(0));
    let longest_us = Arc::new(AtomicU64::new(0));
    let audio = {
        let (stop, blocks, longest_us) = (
            Arc::clone(&stop),
            Arc::clone(&blocks),
            Arc::clone(&longest_us),
        );
        std::thread::spawn(move || -> Result<_> {
            let period = Duration::from_secs_f64(256.0 / 48_000.0);
            let mut deadline = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                p.process(256, Some(&t.event()), &[])?;
                let took = start.elapsed().as_micros() as u64;
                longest_us.fetch_max(took, Ordering::Relaxed);
                t.advance(256, 48_000.0);
                blocks.fetch_add(1, Ordering::Relaxed);
                deadline += period;
                if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            Ok(p)
        })
    };

    // OSC traffic from a "phone".
    let phone = UdpSocket::bind("127.0.0.1:0")?;
    for i in 0..20 {
        let mut bytes = Vec::new();
        osc::encode_message(
            &Message::new("/lockstep/param/mac_1", vec![Arg::Float(i as f32 / 20.0)]),
            &mut bytes,
        );
        phone.send_to(&bytes, "127.0.0.1:8034")?;
    }
    // The scenario settles: pymidi connected, Studio C given up on (12 invitations, a
    // second apart), Link joined.
    let settled = |s: &lockstep_net::status::ExportedStatus| {
        let peers = s
            .worker
            .instances
            .first()
            .and_then(|i| i.rtpmidi.as_ref())
            .map(|r| r.peers.clone())
            .unwrap_or_default();
        let connected = peers.iter().any(|p| p.connected);
        let given_up = peers
            .iter()
            .any(|p| !p.connected && p.address.ends_with(":6044") && p.last_close.is_some());
        let linked = s.worker.link.as_ref().is_some_and(|l| l.session_peers == 1);
        connected && given_up && linked
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = probe.read()?;
        if settled(&status) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the scenario never settled: {status:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let threads_before = threads();
    let parent = Parent::new(1000, 800)?;
    let (width, height) = instance.open_editor(u64::from(parent.window))?;
    ensure!(
        (width, height) == (760, 560),
        "editor size {width}×{height}"
    );
    // Let it draw a few frames (software OpenGL under Xvfb).
    std::thread::sleep(Duration::from_millis(1500));
    let rgb = parent.capture(width as u16, height as u16)?;
    let out = lockstep_host::bundle::target_dir().join("editor-status.png");
    write_png(&out, width, height, &rgb)?;
    let colours: std::collections::BTreeSet<[u8; 3]> =
        rgb.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();
    let background = rgb.chunks_exact(3).filter(|c| c == &&rgb[..3]).count();
    let total = (width * height) as usize;
    println!(
        "editor {width}×{height}: {} colours, {:.1} % background; saved {}",
        colours.len(),
        background as f64 * 100.0 / total as f64,
        out.display()
    );
    ensure!(
        colours.len() > 40,
        "blank editor: {} colours",
        colours.len()
    );
    ensure!(
        background < total * 97 / 100,
        "blank editor: {background} of {total} one colour"
    );
    // Red (lost) and green (connected) marks are on the page.
    let has = |want: fn(&[u8]) -> bool| rgb.chunks_exact(3).any(want);
    ensure!(has(|c| c[0] > 190 && c[1] < 90 && c[2] < 90), "no red mark");
    ensure!(
        has(|c| c[1] > 160 && c[0] < 90 && c[2] < 120),
        "no green mark"
    );
    instance.close_editor()?;

    // 100 open/close cycles while the audio thread runs. The window's thread exits a moment
    // after close: wait for it before looking at threads and memory. Five cycles first load
    // the GL driver (tens of MB mapped once and kept, as every GL program does).
    let settle = |n: usize| {
        let until = Instant::now() + Duration::from_secs(3);
        while threads() > n && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for _ in 0..5 {
        instance.open_editor(u64::from(parent.window))?;
        std::thread::sleep(Duration::from_millis(20));
        instance.close_editor()?;
        settle(threads_before);
    }
    let (heap_before, rss_before) = (heap_in_use(), rss_kib());
    let blocks_before = blocks.load(Ordering::Relaxed);
    let started = Instant::now();
    for cycle in 0..100 {
        instance
            .open_editor(u64::from(parent.window))
            .with_context(|| format!("cycle {cycle}"))?;
        std::thread::sleep(Duration::from_millis(20));
        instance.close_editor()?;
        settle(threads_before);
    }
    let cycles_took = started.elapsed();
    let (threads_after, heap_after, rss_after) = (threads(), heap_in_use(), rss_kib());
    let blocks_during = blocks.load(Ordering::Relaxed) - blocks_before;
    stop.store(true, Ordering::Relaxed);
    let p = match audio.join() {
        Ok(p) => p?,
        Err(_) => bail!("the audio thread panicked"),
    };
    let expected = cycles_took.as_secs_f64() * 48_000.0 / 256.0;
    let per_cycle_kib = (heap_after as f64 - heap_before as f64) / 1024.0 / 100.0;
    println!(
        "100 cycles in {:.1} s: threads {threads_before} → {threads_after}, heap in use {} → {} \
         KiB ({per_cycle_kib:.1} KiB per cycle), RSS {rss_before} → {rss_after} KiB, \
         {blocks_during} blocks processed ({expected:.0} due), longest process() {} µs",
        cycles_took.as_secs_f64(),
        heap_before / 1024,
        heap_after / 1024,
        longest_us.load(Ordering::Relaxed)
    );
    ensure!(threads_after <= threads_before, "threads left behind");
    // Known: about 80 KiB per cycle stays allocated below the editor (the egui pages drawn
    // 300 times in fresh egui contexts leave nothing; the GL stack under baseview is the
    // suspect, see README). Bounded here so a real leak of ours (a model, a log copy: MBs
    // per open) fails.
    ensure!(
        per_cycle_kib < 256.0,
        "heap grew {per_cycle_kib:.1} KiB per open/close cycle"
    );
    ensure!(
        blocks_during as f64 > expected * 0.8,
        "process() fell behind during the cycles: {blocks_during} of {expected:.0} blocks"
    );
    instance.deactivate(p);
    drop(silent);
    Ok(())
}
