//! bhyve's MMIO bus with the platform's devices (PL011, NS16550A, PL031, empty virtio
//! slots) at their platform addresses: guest reads and writes of any address, size and
//! value, and console input, interleaved. Invariants: nothing panics; a read returns no
//! more bits than its size; only addresses inside a device window reach a device, and
//! every other access is counted as unhandled; each interrupt line sees strictly
//! alternating assert and deassert calls. The sink plays a kernel with MMIO shortcuts:
//! it takes every register the bus offers, and stores the fuzzer queues to the buffered
//! ones reach the devices when the bus drains them, all of them.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bhyve::devices::{ns16550::Ns16550, pl011::Pl011, pl031::Pl031, virtio_empty::EmptySlot};
use bhyve::mmio::{Access, Bus, BusError, IrqError, VmSink};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use libvmmapi::{MmioShortcut, MmioStore};
use vmm_platform as plat;

/// Checks that every line alternates; keeps the registers the bus handed over and the
/// stores queued for them.
#[derive(Default)]
struct Lines {
    levels: Mutex<HashMap<u32, bool>>,
    shortcuts: Mutex<Vec<(u64, MmioShortcut)>>,
    queued: Mutex<Vec<MmioStore>>,
}

impl VmSink for Lines {
    fn set_irq(&self, intid: u32, high: bool) -> std::result::Result<(), IrqError> {
        let mut m = self.levels.lock().unwrap();
        let was = m.insert(intid, high).unwrap_or(false);
        assert_ne!(was, high, "interrupt {intid} set to {high} twice in a row");
        Ok(())
    }
    fn set_shortcut(&self, gpa: u64, what: MmioShortcut) -> std::result::Result<bool, BusError> {
        let mut s = self.shortcuts.lock().unwrap();
        s.retain(|e| e.0 != gpa);
        s.push((gpa, what));
        Ok(true)
    }
    fn take_stores(&self) -> std::result::Result<Vec<MmioStore>, BusError> {
        Ok(std::mem::take(&mut *self.queued.lock().unwrap()))
    }
}

fn windows() -> Vec<plat::Window> {
    let mut w = vec![plat::PL011, plat::NS16550, plat::PL031];
    w.extend((0..plat::VIRTIO_MMIO_SLOTS).filter_map(plat::virtio_mmio_slot));
    w
}

fn bus(sink: &Arc<Lines>) -> Arc<Bus> {
    let mut b = Bus::new(sink.clone());
    b.attach(
        "pl011",
        plat::PL011,
        Some(plat::PL011_INTID),
        Box::new(Pl011::new(std::io::sink())),
    );
    b.attach(
        "ns16550",
        plat::NS16550,
        Some(plat::NS16550_INTID),
        Box::new(Ns16550::new(std::io::sink())),
    );
    b.attach(
        "pl031",
        plat::PL031,
        Some(plat::PL031_INTID),
        Box::new(Pl031::new()),
    );
    for n in 0..plat::VIRTIO_MMIO_SLOTS {
        if let Some(w) = plat::virtio_mmio_slot(n) {
            b.attach(
                "virtio-mmio",
                w,
                Some(plat::virtio_mmio_intid(n)),
                Box::new(EmptySlot),
            );
        }
    }
    Arc::new(b)
}

fn one(
    u: &mut Unstructured<'_>,
    b: &Arc<Bus>,
    sink: &Lines,
    ws: &[plat::Window],
    unhandled: &mut u64,
) -> Result<()> {
    let size = *u.choose(&[1u8, 2, 4, 8, 3, 0, 16])?;
    let gpa = if u.ratio(7u8, 8)? {
        let w = u.choose(ws)?;
        w.base + u64::from(u.arbitrary::<u16>()?) % (w.size + 16)
    } else {
        u.arbitrary()?
    };
    let inside =
        matches!(size, 1 | 2 | 4 | 8) && ws.iter().any(|w| w.contains_range(gpa, u64::from(size)));
    // What the kernel would answer a load at `gpa` with, from what the bus published.
    let published = sink
        .shortcuts
        .lock()
        .unwrap()
        .iter()
        .find_map(|e| match e.1 {
            MmioShortcut::AnswerLoads(v) if e.0 == gpa => Some(v),
            _ => None,
        });
    let r = match u.int_in_range(0u8..=6)? {
        0 | 1 => {
            let r = b.read(gpa, size);
            // The kernel answers the model's value: a load of a published register
            // reads the same from the model.
            if let (Some(v), Ok(Access::Device(got)), 1 | 2 | 4) = (published, &r, size) {
                let mask = u64::MAX >> (64 - u32::from(size) * 8);
                assert_eq!(
                    *got,
                    u64::from(v) & mask,
                    "{size}-byte load at {gpa:#x}: published {v:#x}"
                );
            }
            r
        }
        2 | 3 => b.write(gpa, size, u.arbitrary()?),
        5 => {
            // A store the kernel queued for a buffered register.
            let buffered: Vec<u64> = sink
                .shortcuts
                .lock()
                .unwrap()
                .iter()
                .filter(|e| {
                    matches!(
                        e.1,
                        MmioShortcut::BufferStores | MmioShortcut::Mirror { .. }
                    )
                })
                .map(|e| e.0)
                .collect();
            if !buffered.is_empty() {
                let store = MmioStore {
                    gpa: *u.choose(&buffered)?,
                    size: *u.choose(&[1u8, 2, 4])?,
                    value: u.arbitrary()?,
                };
                sink.queued.lock().unwrap().push(store);
            }
            return Ok(());
        }
        6 => {
            b.drain_stores().expect("the sink refuses nothing");
            assert!(sink.queued.lock().unwrap().is_empty(), "a store left");
            return Ok(());
        }
        _ => {
            if let Some(d) = b.device(0) {
                let n = u.int_in_range(0usize..=40)?;
                let _ = d.push_input(u.bytes(n.min(u.len()))?);
            }
            return Ok(());
        }
    };
    match r {
        Ok(Access::Device(v)) => {
            assert!(inside, "{size} bytes at {gpa:#x} reached a device");
            if size < 8 {
                assert_eq!(
                    v >> (u32::from(size) * 8),
                    0,
                    "{size}-byte read at {gpa:#x} gave {v:#x}"
                );
            }
        }
        Ok(Access::Unhandled) => {
            assert!(
                !inside,
                "{size} bytes at {gpa:#x} inside a window were not handled"
            );
            *unhandled += 1;
        }
        Err(e) => panic!("the interrupt sink refused: {e}"),
    }
    assert_eq!(b.unhandled_count(), *unhandled);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let sink = Arc::new(Lines::default());
    let b = bus(&sink);
    let ws = windows();
    let mut unhandled = 0u64;
    while !u.is_empty() {
        if one(&mut u, &b, &sink, &ws, &mut unhandled).is_err() {
            break;
        }
    }
});
