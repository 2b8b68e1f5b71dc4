//! The devicetree bhyveload writes for the guest platform (vmm_platform): every address
//! and interrupt comes from there, never from a number repeated here.
//!
//! Choices (bhyveload/README.md, "Decisions", has the reasons in full):
//! * root `compatible = "freebsd,bhyve", "linux,dummy-virt"`: FreeBSD's own bhyve name,
//!   then the binding Linux defines for a virtual machine with a generated devicetree;
//! * timer PPIs flagged level-high (4), as QEMU's virt and Firecracker do: the GIC has
//!   no polarity for PPIs and the architected timer's output is level, active high.
//!   FreeBSD's bhyve writes level-low; both FreeBSD and Linux accept either for a PPI.

use vm_fdt::{Error as FdtError, FdtWriter};
use vmm_platform as plat;

/// phandle of the interrupt controller.
pub const PHANDLE_GIC: u32 = 1;
/// phandle of the APB clock the PrimeCell devices name.
pub const PHANDLE_APB_PCLK: u32 = 2;
/// The APB clock rate (24 MHz, as FreeBSD's bhyve and QEMU's virt describe it).
pub const APB_PCLK_HZ: u32 = 24_000_000;
/// NS16550A input clock: the standard 1.8432 MHz crystal, so divisor 1 is 115200 baud.
pub const NS16550_CLOCK_HZ: u32 = 1_843_200;

/// Devicetree interrupt specifier cells (GIC binding).
pub const GIC_SPI: u32 = 0;
pub const GIC_PPI: u32 = 1;
pub const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

/// What the generated devicetree describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdtConfig {
    pub ram_base: u64,
    pub ram_size: u64,
    pub ncpus: u32,
    /// /chosen/bootargs (the `-e` words joined by spaces), if any.
    pub bootargs: Option<String>,
    /// /chosen/linux,initrd-start and -end.
    pub initrd: Option<(u64, u64)>,
    /// Host entropy for /chosen/rng-seed (the guest's random pool at boot) and, from its
    /// first 8 bytes, /chosen/kaslr-seed (the kernel's address randomisation), as QEMU's
    /// virt gives them; empty for none.
    pub seed: Vec<u8>,
}

/// Bytes of host entropy bhyveload puts in /chosen (QEMU's virt gives 32 for rng-seed).
pub const SEED_BYTES: usize = 64;

/// Node name of a device at `base`: `name@hex`.
pub fn node_name(name: &str, base: u64) -> String {
    format!("{name}@{base:x}")
}

/// The `reg` affinity value of vCPU `n`: MPIDR_EL1 without bit 31 (RES1) and the MT/U
/// bits, which Linux masks off before comparing (MPIDR_HWID_BITMASK).
pub fn cpu_reg(n: u32) -> u32 {
    (plat::vcpu_mpidr(n) & 0x00ff_ffff) as u32
}

fn spi(intid: u32, flags: u32) -> [u32; 3] {
    [GIC_SPI, intid - plat::SPI_BASE, flags]
}
fn ppi(intid: u32, flags: u32) -> [u32; 3] {
    [GIC_PPI, intid - plat::PPI_BASE, flags]
}

/// The PL011 node's path (/aliases/serial0, which /chosen/stdout-path names).
pub fn pl011_path() -> String {
    format!("/{}", node_name("serial", plat::PL011.base))
}

/// Builds the devicetree blob.
pub fn generate(cfg: &FdtConfig) -> Result<Vec<u8>, FdtError> {
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string_list(
        "compatible",
        vec!["freebsd,bhyve".into(), "linux,dummy-virt".into()],
    )?;
    w.property_string("model", "bhyve arm64 virtual machine")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", PHANDLE_GIC)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("stdout-path", "serial0:115200n8")?;
    if let Some(k) = cfg.seed.get(..8) {
        let mut kaslr = [0u8; 8];
        kaslr.copy_from_slice(k);
        w.property_u64("kaslr-seed", u64::from_le_bytes(kaslr))?;
        w.property("rng-seed", &cfg.seed)?;
    }
    if let Some(args) = &cfg.bootargs {
        w.property_string("bootargs", args)?;
    }
    if let Some((start, end)) = cfg.initrd {
        w.property_u64("linux,initrd-start", start)?;
        w.property_u64("linux,initrd-end", end)?;
    }
    w.end_node(chosen)?;

    let aliases = w.begin_node("aliases")?;
    w.property_string("serial0", &pl011_path())?;
    w.end_node(aliases)?;

    let memory = w.begin_node(&node_name("memory", cfg.ram_base))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.ram_base, cfg.ram_size])?;
    w.end_node(memory)?;

    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", 1)?;
    w.property_u32("#size-cells", 0)?;
    for n in 0..cfg.ncpus {
        let reg = cpu_reg(n);
        let cpu = w.begin_node(&node_name("cpu", reg.into()))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        w.property_string("enable-method", "psci")?;
        w.property_u32("reg", reg)?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let gicr = plat::gicr(cfg.ncpus);
    let gic = w.begin_node(&node_name("interrupt-controller", plat::GICD.base))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_u32("#interrupt-cells", 3)?;
    // No child nodes (no ITS): an interrupt provider still names its address cells.
    w.property_u32("#address-cells", 0)?;
    w.property_null("interrupt-controller")?;
    w.property_array_u64(
        "reg",
        &[plat::GICD.base, plat::GICD.size, gicr.base, gicr.size],
    )?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_u32("phandle", PHANDLE_GIC)?;
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    let mut cells = Vec::with_capacity(12);
    for intid in [
        plat::TIMER_SEC_PHYS_INTID,
        plat::TIMER_NS_PHYS_INTID,
        plat::TIMER_VIRT_INTID,
        plat::TIMER_HYP_INTID,
    ] {
        cells.extend_from_slice(&ppi(intid, IRQ_TYPE_LEVEL_HIGH));
    }
    w.property_array_u32("interrupts", &cells)?;
    w.end_node(timer)?;

    let clk = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", APB_PCLK_HZ)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_u32("phandle", PHANDLE_APB_PCLK)?;
    w.end_node(clk)?;

    let uart = w.begin_node(&node_name("serial", plat::PL011.base))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    w.property_array_u64("reg", &[plat::PL011.base, plat::PL011.size])?;
    w.property_array_u32("interrupts", &spi(plat::PL011_INTID, IRQ_TYPE_LEVEL_HIGH))?;
    w.property_array_u32("clocks", &[PHANDLE_APB_PCLK, PHANDLE_APB_PCLK])?;
    w.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    w.end_node(uart)?;

    let rtc = w.begin_node(&node_name("rtc", plat::PL031.base))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl031".into(), "arm,primecell".into()],
    )?;
    w.property_array_u64("reg", &[plat::PL031.base, plat::PL031.size])?;
    w.property_array_u32("interrupts", &spi(plat::PL031_INTID, IRQ_TYPE_LEVEL_HIGH))?;
    w.property_u32("clocks", PHANDLE_APB_PCLK)?;
    w.property_string("clock-names", "apb_pclk")?;
    w.end_node(rtc)?;

    let ns = w.begin_node(&node_name("serial", plat::NS16550.base))?;
    w.property_string("compatible", "ns16550a")?;
    w.property_array_u64("reg", &[plat::NS16550.base, plat::NS16550.size])?;
    w.property_array_u32("interrupts", &spi(plat::NS16550_INTID, IRQ_TYPE_LEVEL_HIGH))?;
    w.property_u32("clock-frequency", NS16550_CLOCK_HZ)?;
    w.property_u32("reg-shift", 0)?;
    w.property_u32("reg-io-width", 1)?;
    w.property_string("status", "okay")?;
    w.end_node(ns)?;

    for n in 0..plat::VIRTIO_MMIO_SLOTS {
        let Some(slot) = plat::virtio_mmio_slot(n) else {
            break;
        };
        let v = w.begin_node(&node_name("virtio_mmio", slot.base))?;
        w.property_string("compatible", "virtio,mmio")?;
        w.property_array_u64("reg", &[slot.base, slot.size])?;
        // Level: bhyve holds the line while the slot's InterruptStatus is non-zero.
        w.property_array_u32(
            "interrupts",
            &spi(plat::virtio_mmio_intid(n), IRQ_TYPE_LEVEL_HIGH),
        )?;
        w.property_null("dma-coherent")?;
        w.end_node(v)?;
    }

    w.end_node(root)?;
    w.finish()
}
