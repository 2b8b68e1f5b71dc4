//! Read-only looks at a VM's state that no ioctl reports, for test doubles built on
//! the fake host (feature `fake-host`): whether and how it is suspended, where its vGIC
//! is, the level of an interrupt line. Everything an ioctl can read is read through
//! the ioctl instead.

use crate::host::Host;
use crate::vmm::Vmm;
use core::sync::atomic::Ordering;

/// A vGIC's windows: (distributor base, size), (redistributors base, size).
pub type VgicWindows = ((u64, u64), (u64, u64));

impl<H: Host> Vmm<H> {
    /// Whether VM `name` exists.
    pub fn vm_exists(&self, name: &[u8]) -> bool {
        self.lookup(name).is_ok()
    }

    /// The `enum vm_suspend_how` VM_SUSPEND gave VM `name` (0 while it runs); `None`
    /// if there is no such VM.
    pub fn suspend_how(&self, name: &[u8]) -> Option<i32> {
        Some(self.lookup(name).ok()?.suspend.load(Ordering::SeqCst))
    }

    /// The windows of VM `name`'s vGIC, `Some(None)` before VM_ATTACH_VGIC.
    pub fn vgic_windows(&self, name: &[u8]) -> Option<Option<VgicWindows>> {
        let vm = self.lookup(name).ok()?;
        let g = vm.vgic.lock();
        Some(g.as_ref().map(|v| (v.dist_window(), v.redist_window())))
    }

    /// The input line of SPI `intid` of VM `name` (what VM_ASSERT_IRQ and
    /// VM_DEASSERT_IRQ drive); `None` without the VM, a vGIC or that SPI.
    pub fn spi_line(&self, name: &[u8], intid: u32) -> Option<bool> {
        let vm = self.lookup(name).ok()?;
        let g = vm.vgic.lock();
        g.as_ref()?.spi_line(intid)
    }
}
