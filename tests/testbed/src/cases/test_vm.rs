//! A minimal VM for the world-switch tests: guest RAM at IPA 0x8000_0000 mapped through
//! its own stage-2 table and VMID, one vCPU context mapped at EL2. (The real VM
//! lifecycle lives in vmm-core; this exists so the EL2 blob can be tested on its
//! own, as the brief's step 3 asks before the core lands.)

extern crate alloc;
use crate::kernel::host::TestbedHost;
use crate::kernel::hyp::TEST_IPA_BITS;
use crate::kernel::hyp::{hyp_call, map_el2_data};
use crate::kernel::mm::{alloc_pages, free_pages_at, pa_to_va, PAGE};
use core::sync::atomic::{AtomicU64, Ordering};
use vmm_core::el2::S2Geometry;
use vmm_core::stage2::{Perm, Stage2};
use vmm_core::vcpu;
use vmm_sys::arm64::regs::pstate;
use vmm_sys::hyp::{VcpuContext, HYP_ENTER_GUEST, HYP_S2_TLBI_ALL};

pub const GUEST_RAM_IPA: u64 = 0x8000_0000;
/// SCTLR_EL1 reset-like value for the guest: RES1 bits, MMU off.
const GUEST_SCTLR: u64 = 0x30d0_0800;

static NEXT_VMID: AtomicU64 = AtomicU64::new(1);

pub struct TestVm {
    /// The stage-2 tables (vmm-core's, as the real VMs use); the hardware reads them
    /// through VTTBR. Taken and destroyed on drop.
    s2: Option<Stage2>,
    host: TestbedHost,
    ram_pa: u64,
    ram_pages: usize,
    ctx_pa: u64,
    pub vttbr: u64,
}

impl TestVm {
    /// A VM with `ram_pages` of RAM holding `image` at its start.
    pub fn new(image: &[u8], ram_pages: usize) -> Option<TestVm> {
        let ram_pa = alloc_pages(ram_pages)?;
        // SAFETY: fresh pages of at least image.len() bytes (checked).
        if image.len() as u64 > ram_pages as u64 * PAGE {
            free_pages_at(ram_pa, ram_pages);
            return None;
        }
        // SAFETY: the RAM pages are ours and big enough (checked above).
        unsafe {
            core::ptr::copy_nonoverlapping(image.as_ptr(), pa_to_va(ram_pa) as *mut u8, image.len())
        };
        let host = TestbedHost::new();
        let geom = S2Geometry::new(TEST_IPA_BITS).ok()?;
        let vmid = (NEXT_VMID.fetch_add(1, Ordering::Relaxed) & 0xff).max(1) as u16;
        let mut s2 = Stage2::new(&host, geom, vmid).ok()?;
        let rwx = Perm {
            read: true,
            write: true,
            exec: true,
        };
        if s2
            .map(&host, GUEST_RAM_IPA, ram_pa, ram_pages as u64 * PAGE, rwx)
            .is_err()
        {
            s2.destroy(&host);
            return None;
        }
        let ctx_pa = alloc_pages(1)?;
        map_el2_data(ctx_pa, PAGE)?;
        let vttbr = s2.vttbr();
        vmm_arm64::cache::inval_icache_all();
        let mut vm = TestVm {
            s2: Some(s2),
            host,
            ram_pa,
            ram_pages,
            ctx_pa,
            vttbr,
        };
        let midr = vmm_arm64::mrs!("midr_el1");
        let c = vm.ctx();
        c.pc = GUEST_RAM_IPA;
        c.pstate = pstate::GUEST_RESET;
        c.el1.sctlr_el1 = GUEST_SCTLR;
        c.el1.cpacr_el1 = 3 << 20;
        // The EL2 controls vmm-core gives its vCPUs on this CPU.
        let traps = vcpu::HostTraps::new(&vmm_arm64::IdRegs::read());
        c.el2.hcr_el2 = traps.hcr;
        c.el2.vpidr_el2 = midr;
        c.el2.vmpidr_el2 = 0x8000_0000;
        c.el2.cptr_el2 = traps.cptr;
        c.el2.mdcr_el2 = vcpu::GUEST_MDCR;
        c.el2.cnthctl_el2 = vcpu::GUEST_CNTHCTL;
        c.el2.vttbr_el2 = vttbr;
        c.el2.vtcr_el2 = crate::kernel::hyp::el2_config()?.vtcr_el2;
        c.vgic.ich_hcr_el2 = 1;
        // Start from a clean stage-2 TLB for this VMID (it may have been used before).
        hyp_call(HYP_S2_TLBI_ALL, vttbr, 0, 0);
        Some(vm)
    }

    pub fn ctx(&mut self) -> &mut VcpuContext {
        // SAFETY: the context page is owned by this VM and only touched by the CPU
        // that runs it (the caller), through the direct map.
        unsafe { &mut *(pa_to_va(self.ctx_pa) as *mut VcpuContext) }
    }

    pub fn ctx_pa(&self) -> u64 {
        self.ctx_pa
    }

    /// Enters the guest once; returns the exit kind.
    pub fn run(&self) -> u64 {
        hyp_call(HYP_ENTER_GUEST, self.ctx_pa, 0, 0)
    }

    pub fn write_ram_u64(&self, off: u64, v: u64) {
        assert!(off + 8 <= self.ram_pages as u64 * PAGE);
        // SAFETY: bounds-checked above; guest RAM is ours.
        unsafe { core::ptr::write_volatile((pa_to_va(self.ram_pa) + off) as *mut u64, v) }
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        hyp_call(HYP_S2_TLBI_ALL, self.vttbr, 0, 0);
        if let Some(s2) = self.s2.take() {
            s2.destroy(&self.host);
        }
        free_pages_at(self.ram_pa, self.ram_pages);
        free_pages_at(self.ctx_pa, 1);
    }
}
