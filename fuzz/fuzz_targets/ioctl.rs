//! The /dev/vmm dispatcher over the core's fake host: sequences of requests (command,
//! argument bytes, pointer members naming a user buffer whose contents come from the
//! input too) across three VM names and both devices. Invariants: nothing panics; after
//! every VM is destroyed the fake host has every page back and no guest memory is counted
//! against the limit, and after the core unloads, every allocation.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmm_core::fake::Scripted;
use vmm_core::DeviceRef;
use vmm_fuzz::{core, create, destroy, destroy_all, RAM};
use vmm_sys::ioctl::{self, iocparm_len};

const NAMES: [&str; 3] = ["fa", "fb", "fc"];
/// The user buffer pointer members may name.
const UBUF_LEN: usize = 4096;

/// `IOCTL_TRACE=1` prints every request (to read a crash input).
fn trace() -> bool {
    static T: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *T.get_or_init(|| std::env::var_os("IOCTL_TRACE").is_some())
}

fn one(u: &mut Unstructured<'_>, v: &vmm_fuzz::Core, ubuf: u64) -> Result<()> {
    let name = *u.choose(&NAMES)?;
    match u.int_in_range(0u8..=9)? {
        0 => {
            let r = create(v, name);
            if trace() {
                eprintln!("create {name} -> {r:?} (pages {})", v.host().pages_in_use());
            }
        }
        1 => {
            let r = destroy(v, name);
            if trace() {
                eprintln!(
                    "destroy {name} -> {r:?} (pages {})",
                    v.host().pages_in_use()
                );
            }
        }
        _ => {
            let ctl = u.ratio(1u8, 8)?;
            let cmd = if ctl {
                *u.choose(&ioctl::VMMCTL_REQUESTS)?
            } else {
                *u.choose(&ioctl::VM_REQUESTS)?
            };
            let len = iocparm_len(cmd);
            let mut arg = vec![0u8; len];
            let given = u.bytes(len.min(u.len()))?;
            arg[..given.len()].copy_from_slice(given);
            // Pointer members: some aligned words name the user buffer (at an offset,
            // maybe past its end) instead of what the input said.
            for w in (0..len / 8).map(|i| i * 8) {
                if u.ratio(1u8, 6)? {
                    let off: u16 = u.arbitrary()?;
                    let p = ubuf.wrapping_add(u64::from(off % (UBUF_LEN as u16 + 64)));
                    arg[w..w + 8].copy_from_slice(&p.to_le_bytes());
                }
            }
            if cmd == ioctl::VM_RUN {
                // The guest makes one exit (a call to userspace), then a signal ends the
                // run if the core handled it itself: VM_RUN always returns.
                let mut q = v.host().script.lock().unwrap();
                q.clear();
                q.push_back(Scripted::hvc(RAM + 4, &[u.arbitrary()?]));
                q.push_back(Scripted::signal(RAM + 8));
            }
            let dev = if ctl {
                DeviceRef::Ctl
            } else {
                DeviceRef::Vm(name.as_bytes())
            };
            let arg_in = arg.clone();
            let r = v.dispatch(dev, cmd, &mut arg);
            if trace() {
                eprintln!(
                    "{} nr {} {arg_in:02x?} -> {r:?} (pages {})",
                    if ctl { "ctl" } else { name },
                    ioctl::ioc_num(cmd),
                    v.host().pages_in_use()
                );
            }
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let v = core();
    let base = v.host().pages_in_use();
    let ubuf = v.host().user_alloc(UBUF_LEN);
    if let Ok(fill) = u.bytes(u.len().min(UBUF_LEN).min(64)) {
        v.host().user_write(ubuf, fill);
    }
    for _ in 0..64 {
        if u.is_empty() || one(&mut u, &v, ubuf).is_err() {
            break;
        }
    }
    destroy_all(&v);
    assert_eq!(
        v.guest_mem().0,
        0,
        "guest memory still counted with no VM left"
    );
    assert_eq!(
        v.host().pages_in_use(),
        base,
        "pages still held after every VM was destroyed"
    );
    if v.shutdown().is_err() {
        panic!("the core does not unload with no VM left");
    }
    let host = match v.into_host() {
        Ok(h) => h,
        Err(_) => panic!("the core is still in use after unload"),
    };
    assert_eq!(host.pages_in_use(), 0, "pages held after unload");
});
