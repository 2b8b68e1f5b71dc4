//! bhyve's MMIO bus with the platform's devices (PL011, NS16550A, PL031, empty virtio
//! slots) at their platform addresses: guest reads and writes of any address, size and
//! value, and console input, interleaved. Invariants: nothing panics; a read returns no
//! more bits than its size; only addresses inside a device window reach a device, and
//! every other access is counted as unhandled; each interrupt line sees strictly
//! alternating assert and deassert calls.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bhyve::devices::{ns16550::Ns16550, pl011::Pl011, pl031::Pl031, virtio_empty::EmptySlot};
use bhyve::mmio::{Access, Bus, IrqError, IrqSink};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_platform as plat;

/// Checks that every line alternates.
#[derive(Default)]
struct Lines(Mutex<HashMap<u32, bool>>);

impl IrqSink for Lines {
    fn set_irq(&self, intid: u32, high: bool) -> std::result::Result<(), IrqError> {
        let mut m = self.0.lock().unwrap();
        let was = m.insert(intid, high).unwrap_or(false);
        assert_ne!(was, high, "interrupt {intid} set to {high} twice in a row");
        Ok(())
    }
}

fn windows() -> Vec<plat::Window> {
    let mut w = vec![plat::PL011, plat::NS16550, plat::PL031];
    w.extend((0..plat::VIRTIO_MMIO_SLOTS).filter_map(plat::virtio_mmio_slot));
    w
}

fn bus() -> Arc<Bus> {
    let mut b = Bus::new(Arc::new(Lines::default()));
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
    let r = match u.int_in_range(0u8..=4)? {
        0 | 1 => b.read(gpa, size),
        2 | 3 => b.write(gpa, size, u.arbitrary()?),
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
    let b = bus();
    let ws = windows();
    let mut unhandled = 0u64;
    while !u.is_empty() {
        if one(&mut u, &b, &ws, &mut unhandled).is_err() {
            break;
        }
    }
});
