//! What arrives from the other side (the kernel's vm_exit, the testbed's wire messages)
//! never panics the decoders: thousands of deterministic mutations of good messages each
//! give a value or an error.

use libvmmapi::exit::raw;
use libvmmapi::request;
use libvmmapi::{Exit, Reg, Request};
use vmm_sys::abi::{Pod, VmExit};
use vmm_sys::exit::SuspendHow;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn damage(good: &[u8], rng: &mut Rng, may_cut: bool) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(b.len());
        match rng.below(3) {
            0 => b[at] = rng.next() as u8,
            1 => b[at] ^= 1 << rng.below(8),
            _ => {
                let at = at & !3;
                let n = (b.len() - at).min(4);
                let w = if rng.below(2) == 0 { [0xff; 4] } else { [0; 4] };
                b[at..at + n].copy_from_slice(&w[..n]);
            }
        }
    }
    if may_cut && rng.below(6) == 0 {
        let keep = rng.below(b.len() + 1);
        b.truncate(keep);
    }
    b
}

#[test]
fn exits_from_the_kernel() {
    let goods: Vec<VmExit> = vec![
        raw::inst_emul(0x8000_0000, 0x1_0000, 4, false, true, Some(Reg::X(3))),
        raw::reg_emul(0x8000_0004, 0x0032_0c05, true, Some(Reg::X(7))),
        raw::smccc(0x8000_0008, 0x8400_0003, [1, 2, 3, 4, 5, 6, 7]),
        raw::suspended(0x8000_000c, SuspendHow::Reset),
        raw::hyp(0x8000_0010, 1, 0x9600_0045, 0x1234, 0x10),
        raw::paging(0x8000_0014, 0x8800_0000, 0x9200_0007),
    ];
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (mut ok, mut bad) = (0, 0);
    for round in 0..6000 {
        let good = goods[round % goods.len()];
        let bytes = damage(good.as_bytes(), &mut rng, false);
        let exit = VmExit::from_bytes(&bytes).expect("same length");
        match Exit::decode(&exit) {
            Ok(_) => ok += 1,
            Err(_) => bad += 1,
        }
    }
    assert!(ok > 100 && bad > 100, "{ok} decoded, {bad} refused");
}

#[test]
fn wire_requests_and_responses() {
    let goods = [
        request::run("vm0", 1),
        request::set_register_set("vm0", 0, &[(0, 1), (32, 0x8000_0000)]),
        request::get_register_set("vm0", 0, &[0, 1, 2]),
        request::vm_create("vm0").unwrap(),
        request::vm_list(256),
    ];
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    let (mut decoded, mut refused, mut applied) = (0, 0, 0);
    for round in 0..6000 {
        let good = &goods[round % goods.len()];
        // Server side: a damaged request.
        match Request::decode(&damage(&good.encode(), &mut rng, true)) {
            Ok(_) => decoded += 1,
            Err(_) => refused += 1,
        }
        // Client side: a damaged response to a good request.
        let mut req = good.clone();
        let response = damage(&good.encode_response(0), &mut rng, true);
        if req.apply_response(&response).is_ok() {
            applied += 1;
        }
    }
    assert!(
        decoded > 100 && refused > 100 && applied > 100,
        "{decoded} decoded, {refused} refused, {applied} responses applied"
    );
}
