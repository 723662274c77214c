//! Editor frame cost: the editor's pages drawn by egui without a window (layout and
//! tessellation, what the editor's CPU time is besides the GPU upload), with 16 RTP-MIDI
//! peers and 1,000 log lines. Prints one JSON line per page:
//! `{"page", "p50_us", "p99_us", "max_us", "frames"}` (`cargo xtask bench` shows them against
//! the 2 ms per frame target).

use std::time::Instant;

use lockstep::editor::{Panel, Tab, demo_model, draw};

fn main() {
    let model = demo_model(16, 1_000);
    for (tab, page) in [
        (Tab::Status, "status"),
        (Tab::Settings, "settings"),
        (Tab::Log, "log"),
    ] {
        let ctx = egui::Context::default();
        let mut panel = Panel {
            tab,
            ..Panel::default()
        };
        let input = || egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(
                egui::Pos2::ZERO,
                egui::vec2(760.0, 560.0),
            )),
            ..egui::RawInput::default()
        };
        let frame = |panel: &mut Panel| {
            let mut out = ctx.run_ui(input(), |ui| {
                draw(ui, panel, &model);
            });
            // No renderer here: the font atlas uploads are dropped.
            out.textures_delta.clear();
            ctx.tessellate(out.shapes, out.pixels_per_point).len()
        };
        for _ in 0..30 {
            frame(&mut panel);
        }
        let mut times: Vec<f64> = (0..500)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(frame(&mut panel));
                start.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let q =
            |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "{{\"page\": \"{page}\", \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"max_us\": {:.1}, \"frames\": {}}}",
            q(0.5),
            q(0.99),
            q(1.0),
            times.len()
        );
    }
}
