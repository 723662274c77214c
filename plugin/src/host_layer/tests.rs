//! The planner's contract, without a host.

use super::*;

fn planner() -> (Planner, rtrb::Producer<HostParamChange>, Arc<Shared>) {
    let shared = Arc::new(Shared::default());
    let producer = offer(&shared);
    let offer = claim().expect("offered on this thread");
    assert!(shared.attached.load(Ordering::Acquire));
    let mut planner = Planner::new(offer);
    planner.activate(48_000.0);
    (planner, producer, shared)
}

fn change(id: u32, at: Option<u64>) -> HostParamChange {
    HostParamChange {
        clap_id: id,
        value: f64::from(id) / 100.0,
        at_sample: at,
    }
}

#[test]
fn a_claim_takes_only_the_offer_made_on_this_thread() {
    let shared = Arc::new(Shared::default());
    let _producer = offer(&shared);
    let elsewhere = std::thread::spawn(|| claim().is_some())
        .join()
        .expect("thread");
    assert!(
        !elsewhere,
        "another thread must not take this thread's offer"
    );
    assert!(claim().is_some());
    assert!(claim().is_none(), "an offer is taken once");
}

#[test]
fn immediate_changes_land_at_the_block_start_in_queue_order() {
    let (mut p, mut tx, _) = planner();
    tx.push(change(1, None)).expect("room");
    tx.push(change(2, None)).expect("room");
    let block = p.plan(256).to_vec();
    assert_eq!(
        block.iter().map(|e| (e.time, e.id)).collect::<Vec<_>>(),
        [(0, 1), (0, 2)]
    );
    assert!(p.plan(256).is_empty(), "taken once");
}

#[test]
fn timed_changes_land_on_their_sample_and_wait_for_their_block() {
    let (mut p, mut tx, shared) = planner();
    shared.clock.store(1000, Ordering::Release);
    tx.push(change(1, Some(1100))).expect("room");
    tx.push(change(2, Some(1300))).expect("room");
    tx.push(change(3, Some(1050))).expect("room");
    // Block 1000..1256: ids 3 (offset 50) and 1 (offset 100), sorted by time.
    let block = p.plan(256).to_vec();
    assert_eq!(
        block.iter().map(|e| (e.time, e.id)).collect::<Vec<_>>(),
        [(50, 3), (100, 1)]
    );
    // Block 1256..1512: id 2 at offset 44.
    shared.clock.store(1256, Ordering::Release);
    let block = p.plan(256).to_vec();
    assert_eq!(
        block.iter().map(|e| (e.time, e.id)).collect::<Vec<_>>(),
        [(44, 2)]
    );
}

#[test]
fn late_timed_changes_land_at_once() {
    let (mut p, mut tx, shared) = planner();
    shared.clock.store(5000, Ordering::Release);
    tx.push(change(1, Some(10))).expect("room");
    assert_eq!(p.plan(64)[0].time, 0);
}

#[test]
fn a_full_block_defers_the_rest_and_counts_it() {
    let (mut p, mut tx, shared) = planner();
    for i in 0..(MAX_PER_BLOCK as u32 + 10) {
        tx.push(change(i, None)).expect("room");
    }
    assert_eq!(p.plan(64).len(), MAX_PER_BLOCK);
    assert_eq!(shared.stats.deferred.load(Ordering::Relaxed), 1);
    assert_eq!(p.plan(64).len(), 10, "the rest come with the next block");
    assert_eq!(
        shared.stats.applied.load(Ordering::Relaxed),
        MAX_PER_BLOCK as u64 + 10
    );
}

#[test]
fn a_full_hold_applies_early_and_counts_it_instead_of_dropping() {
    let (mut p, mut tx, shared) = planner();
    for i in 0..(MAX_PENDING as u32 + 3) {
        tx.push(change(i, Some(1_000_000))).expect("room");
    }
    let block = p.plan(64).to_vec();
    assert_eq!(block.len(), 3, "the ones that found no room land now");
    assert_eq!(shared.stats.early.load(Ordering::Relaxed), 3);
    shared.clock.store(1_000_000, Ordering::Release);
    assert_eq!(p.plan(64).len(), MAX_PENDING, "the held ones land on time");
}

#[test]
fn gestures_open_once_stay_open_while_changes_come_and_end_after_the_hold() {
    let (mut p, mut tx, _) = planner();
    let mut reports = Vec::new();
    tx.push(change(7, None)).expect("room");
    p.plan(4800);
    p.report(4800, &mut |r| reports.push(r));
    assert!(matches!(
        reports[..],
        [Report::Begin(7, 0), Report::Value(_)]
    ));
    reports.clear();
    tx.push(change(7, None)).expect("room");
    p.plan(4800);
    p.report(4800, &mut |r| reports.push(r));
    assert!(matches!(reports[..], [Report::Value(_)]), "{reports:?}");
    // 250 ms = 12,000 samples at 48 kHz counted from the last change's block: after one
    // quiet block 9,600 have passed (still open); the second quiet block (14,400) ends it
    // on its last sample.
    reports.clear();
    p.plan(4800);
    p.report(4800, &mut |r| reports.push(r));
    assert!(reports.is_empty(), "{reports:?}");
    p.plan(4800);
    p.report(4800, &mut |r| reports.push(r));
    assert_eq!(reports, [Report::End(7, 4799)]);
}

#[test]
fn more_parameters_than_gesture_slots_still_report_whole_gestures() {
    let (mut p, mut tx, _) = planner();
    for i in 0..(MAX_GESTURES as u32 + 1) {
        tx.push(change(i, None)).expect("room");
    }
    let mut reports = Vec::new();
    p.plan(64);
    p.report(64, &mut |r| reports.push(r));
    let begins = reports
        .iter()
        .filter(|r| matches!(r, Report::Begin(..)))
        .count();
    let ends = reports
        .iter()
        .filter(|r| matches!(r, Report::End(..)))
        .count();
    assert_eq!(begins, MAX_GESTURES + 1);
    assert_eq!(ends, 1, "the one without a slot is begun and ended at once");
}

#[test]
fn a_detached_planner_passes_nothing() {
    let mut p = Planner::detached();
    assert!(!p.is_attached());
    assert!(p.plan(64).is_empty());
}

#[test]
fn an_audio_cell_refuses_a_second_entry_instead_of_aliasing() {
    let cell = AudioCell::new(0u32);
    let inner = cell.try_with(|v| {
        *v += 1;
        cell.try_with(|w| *w += 1).is_none()
    });
    assert_eq!(inner, Some(true));
    assert_eq!(cell.try_with(|v| *v), Some(1));
}
