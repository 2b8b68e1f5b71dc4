//! The VM's store queue shared by the core and the EL2 code, and the EL2 code's
//! queueing of device-register stores.

use super::timer::dabt_esr;
use crate::abi::MMIO_STORES_MAX;
use crate::hyp::{El2Answer, El2Answers};
use crate::mmio_queue::{MmioStoreQueue, Push};

fn taken(q: &MmioStoreQueue) -> Vec<(u64, u8, u32)> {
    let mut v = Vec::new();
    assert_eq!(q.take(|s| v.push((s.gpa, s.size, s.value))), 0, "none lost");
    v
}

/// Only the core opens the queue; others add to it while open; it fills up; taking
/// closes and empties it, oldest first, each store at its width.
#[test]
fn store_queue_opens_fills_and_empties_in_order() {
    let q = MmioStoreQueue::default();
    assert!(!q.is_open());
    assert_eq!(
        q.push(0x1000, 1, 0x41, false),
        Push::Closed,
        "EL2 may not open"
    );
    assert_eq!(q.push(0x1000, 4, 0x1_2345_6789, true), Push::Queued);
    assert!(q.is_open());
    assert_eq!(q.push(0x1000, 1, 0x1ff, false), Push::Queued);
    assert_eq!(q.push(0x2000, 2, 0xabcd_ef01, false), Push::Queued);
    assert_eq!(
        taken(&q),
        [
            (0x1000, 4, 0x2345_6789),
            (0x1000, 1, 0xff),
            (0x2000, 2, 0xef01)
        ]
    );
    assert!(!q.is_open(), "taking closes");
    assert_eq!(q.push(0x1000, 1, 0, false), Push::Closed);
    assert!(taken(&q).is_empty());
    // Full: the opener's store and MMIO_STORES_MAX - 1 more.
    assert_eq!(q.push(0x1000, 1, 0, true), Push::Queued);
    for i in 1..MMIO_STORES_MAX {
        assert_eq!(q.push(0x1000, 1, i as u64, i % 2 == 0), Push::Queued);
    }
    assert_eq!(q.push(0x1000, 1, 0, false), Push::Full);
    assert_eq!(q.push(0x1000, 1, 0, true), Push::Full);
    let all = taken(&q);
    assert_eq!(all.len(), MMIO_STORES_MAX);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, s)| s.2 == (i as u32 & 0xff)));
}

/// Stores pushed by several CPUs at once are all taken, each CPU's in its own order,
/// and none is taken twice, while a taker empties the queue under them (the core
/// reopens it as it would).
#[test]
fn store_queue_keeps_each_writers_order_under_contention() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let q = MmioStoreQueue::default();
    let done = AtomicBool::new(false);
    const PER_WRITER: u64 = 20_000;
    let mut got: Vec<(u64, u8, u32)> = Vec::new();
    std::thread::scope(|s| {
        let q = &q;
        let done = &done;
        let writers: Vec<_> = (0..3u64)
            .map(|w| {
                s.spawn(move || {
                    let mut i = 0;
                    while i < PER_WRITER {
                        if q.push(0x1000 + w, 4, i, false) == Push::Queued {
                            i += 1;
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                })
            })
            .collect();
        let taker = s.spawn(move || {
            let mut v = Vec::new();
            loop {
                let last = done.load(Ordering::SeqCst);
                assert_eq!(q.take(|s| v.push((s.gpa, s.size, s.value))), 0);
                if last {
                    return v;
                }
                // The core reopening it (one thread plays the lock's holder for both).
                assert_eq!(
                    q.push(0x9999, 1, 0, true),
                    Push::Queued,
                    "taken: closed, empty"
                );
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        got = taker.join().unwrap();
    });
    let mut next = [0u32; 3];
    for (gpa, size, value) in got.into_iter().filter(|s| s.0 != 0x9999) {
        assert_eq!(size, 4);
        let w = (gpa - 0x1000) as usize;
        assert_eq!(value, next[w], "writer {w} out of order");
        next[w] += 1;
    }
    assert_eq!(next, [PER_WRITER as u32; 3], "every store taken once");
}

/// The EL2 code queues a store only to one of its store rows, with a syndrome it may
/// handle, from the right register at the store's width, into an open queue; anything
/// else goes to the core.
#[test]
fn el2_queues_device_stores_only_at_its_rows_into_an_open_queue() {
    use crate::arm64::esr::dabt;
    let mut t = El2Answers {
        enabled: 1,
        ..El2Answers::default()
    };
    t.store_ipa = [0x1_0000, 0x2_0000, 0, 0];
    let q = MmioStoreQueue::default();
    let mut x = [0u64; 31];
    x[3] = 0x1234_5678_9abc_def0;
    x[30] = 0x8190;
    let str_w3 = dabt_esr(2, false, false, 3, dabt::WNR, 0x07);
    let store = |t: &El2Answers, esr: u64, ipa: u64, x: &[u64; 31]| {
        t.answer_store(esr, || ipa, x, || Some(&q))
    };
    assert_eq!(store(&t, str_w3, 0x1_0000, &x), None, "no row in use");
    t.store_rows = 1;
    assert_eq!(store(&t, str_w3, 0x1_0000, &x), None, "queue closed");
    assert_eq!(q.push(0x3_0000, 1, 0, true), Push::Queued);
    assert_eq!(store(&t, str_w3, 0x1_0000, &x), Some(El2Answer::Ignored));
    // strb w30, strh wzr (Rt 31).
    let strb_w30 = dabt_esr(0, false, false, 30, dabt::WNR, 0x06);
    let strh_wzr = dabt_esr(1, false, false, 31, dabt::WNR, 0x05);
    assert_eq!(store(&t, strb_w30, 0x1_0000, &x), Some(El2Answer::Ignored));
    assert_eq!(store(&t, strh_wzr, 0x1_0000, &x), Some(El2Answer::Ignored));
    // Not queued: another address, a row not in use, no queue, 8 bytes, a load, a
    // stage-1 walk, cache maintenance, no valid FAR, an external abort, a permission
    // or access-flag fault, no syndrome.
    assert_eq!(store(&t, str_w3, 0x1_0004, &x), None);
    assert_eq!(store(&t, str_w3, 0x2_0000, &x), None, "row 1 not in use");
    assert_eq!(t.answer_store(str_w3, || 0x1_0000, &x, || None), None);
    assert_eq!(
        store(
            &t,
            dabt_esr(3, false, true, 3, dabt::WNR, 0x07),
            0x1_0000,
            &x
        ),
        None
    );
    assert_eq!(
        store(&t, dabt_esr(2, false, false, 3, 0, 0x07), 0x1_0000, &x),
        None
    );
    for extra in [dabt::S1PTW, dabt::CM, dabt::FNV, dabt::EA] {
        let esr = dabt_esr(2, false, false, 3, dabt::WNR | extra, 0x07);
        assert_eq!(store(&t, esr, 0x1_0000, &x), None);
    }
    for dfsc in [0x0f, 0x0b, 0x00, 0x10] {
        let esr = dabt_esr(2, false, false, 3, dabt::WNR, dfsc);
        assert_eq!(store(&t, esr, 0x1_0000, &x), None);
    }
    let no_isv = str_w3 & !u64::from(dabt::ISV);
    assert_eq!(store(&t, no_isv, 0x1_0000, &x), None);
    t.enabled = 0;
    assert_eq!(store(&t, str_w3, 0x1_0000, &x), None, "disabled");
    assert_eq!(
        taken(&q),
        [
            (0x3_0000, 1, 0),
            (0x1_0000, 4, 0x9abc_def0),
            (0x1_0000, 1, 0x90),
            (0x1_0000, 2, 0)
        ]
    );
    // Full: handed to the core, which sends userspace to take the queue.
    t.enabled = 1;
    assert_eq!(q.push(0x3_0000, 1, 0, true), Push::Queued);
    for _ in 1..MMIO_STORES_MAX {
        assert_eq!(store(&t, str_w3, 0x1_0000, &x), Some(El2Answer::Ignored));
    }
    assert_eq!(store(&t, str_w3, 0x1_0000, &x), None, "full");
}
