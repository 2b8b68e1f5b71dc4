use super::{dtc, dump, strs, u32s, u64s};
use crate::fdt::*;
use vmm_platform as plat;

fn cfg(ncpus: u32) -> FdtConfig {
    FdtConfig {
        ram_base: plat::RAM_BASE_DEFAULT,
        ram_size: 256 << 20,
        ncpus,
        bootargs: Some("console=ttyAMA0 earlycon".into()),
        initrd: Some((0x8f00_0000, 0x8f12_3456)),
        seed: Vec::new(),
    }
}

/// Every node and every property the generator writes, checked value by value.
#[test]
fn every_node_and_property() {
    let dtb = generate(&cfg(3)).unwrap();
    let mut t = dump(&dtb);
    let mut take = |path: &str| t.remove(path).unwrap_or_else(|| panic!("no node {path}"));

    let mut root = take("/");
    assert_eq!(
        root.remove("compatible").unwrap(),
        strs(&["freebsd,bhyve", "linux,dummy-virt"])
    );
    assert_eq!(
        root.remove("model").unwrap(),
        strs(&["bhyve arm64 virtual machine"])
    );
    assert_eq!(root.remove("#address-cells").unwrap(), u32s(&[2]));
    assert_eq!(root.remove("#size-cells").unwrap(), u32s(&[2]));
    assert_eq!(
        root.remove("interrupt-parent").unwrap(),
        u32s(&[PHANDLE_GIC])
    );
    assert!(root.is_empty(), "unchecked: {root:?}");

    let mut chosen = take("/chosen");
    assert_eq!(
        chosen.remove("stdout-path").unwrap(),
        strs(&["serial0:115200n8"])
    );
    assert_eq!(
        chosen.remove("bootargs").unwrap(),
        strs(&["console=ttyAMA0 earlycon"])
    );
    assert_eq!(
        chosen.remove("linux,initrd-start").unwrap(),
        u64s(&[0x8f00_0000])
    );
    assert_eq!(
        chosen.remove("linux,initrd-end").unwrap(),
        u64s(&[0x8f12_3456])
    );
    assert!(chosen.is_empty(), "unchecked: {chosen:?}");

    let mut aliases = take("/aliases");
    assert_eq!(aliases.remove("serial0").unwrap(), strs(&["/serial@10000"]));
    assert!(aliases.is_empty());

    let mut mem = take("/memory@80000000");
    assert_eq!(mem.remove("device_type").unwrap(), strs(&["memory"]));
    assert_eq!(mem.remove("reg").unwrap(), u64s(&[0x8000_0000, 256 << 20]));
    assert!(mem.is_empty());

    let mut cpus = take("/cpus");
    assert_eq!(cpus.remove("#address-cells").unwrap(), u32s(&[1]));
    assert_eq!(cpus.remove("#size-cells").unwrap(), u32s(&[0]));
    assert!(cpus.is_empty());
    for n in 0..3u32 {
        let mut cpu = take(&format!("/cpus/cpu@{n:x}"));
        assert_eq!(cpu.remove("device_type").unwrap(), strs(&["cpu"]));
        assert_eq!(cpu.remove("compatible").unwrap(), strs(&["arm,armv8"]));
        assert_eq!(cpu.remove("enable-method").unwrap(), strs(&["psci"]));
        // MPIDR affinity without the RES1 bit 31.
        assert_eq!(
            cpu.remove("reg").unwrap(),
            u32s(&[(plat::vcpu_mpidr(n) & 0xff_ffff) as u32])
        );
        assert!(cpu.is_empty());
    }

    let mut psci = take("/psci");
    assert_eq!(
        psci.remove("compatible").unwrap(),
        strs(&["arm,psci-1.0", "arm,psci-0.2"])
    );
    assert_eq!(psci.remove("method").unwrap(), strs(&["hvc"]));
    assert!(psci.is_empty());

    let mut gic = take("/interrupt-controller@2f000000");
    assert_eq!(gic.remove("compatible").unwrap(), strs(&["arm,gic-v3"]));
    assert_eq!(gic.remove("#interrupt-cells").unwrap(), u32s(&[3]));
    assert_eq!(gic.remove("#address-cells").unwrap(), u32s(&[0]));
    assert_eq!(
        gic.remove("interrupt-controller").unwrap(),
        Vec::<u8>::new()
    );
    assert_eq!(
        gic.remove("reg").unwrap(),
        u64s(&[
            plat::GICD.base,
            plat::GICD.size,
            plat::GICR_BASE,
            3 * plat::GICR_STRIDE
        ])
    );
    assert_eq!(gic.remove("#redistributor-regions").unwrap(), u32s(&[1]));
    assert_eq!(gic.remove("phandle").unwrap(), u32s(&[PHANDLE_GIC]));
    assert!(gic.is_empty());

    let mut timer = take("/timer");
    assert_eq!(
        timer.remove("compatible").unwrap(),
        strs(&["arm,armv8-timer"])
    );
    assert_eq!(
        timer.remove("interrupts").unwrap(),
        u32s(&[1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4])
    );
    assert!(timer.is_empty());

    let mut clk = take("/apb-pclk");
    assert_eq!(clk.remove("compatible").unwrap(), strs(&["fixed-clock"]));
    assert_eq!(clk.remove("#clock-cells").unwrap(), u32s(&[0]));
    assert_eq!(clk.remove("clock-frequency").unwrap(), u32s(&[24_000_000]));
    assert_eq!(
        clk.remove("clock-output-names").unwrap(),
        strs(&["clk24mhz"])
    );
    assert_eq!(clk.remove("phandle").unwrap(), u32s(&[PHANDLE_APB_PCLK]));
    assert!(clk.is_empty());

    let mut uart = take("/serial@10000");
    assert_eq!(
        uart.remove("compatible").unwrap(),
        strs(&["arm,pl011", "arm,primecell"])
    );
    assert_eq!(uart.remove("reg").unwrap(), u64s(&[0x1_0000, 0x1000]));
    assert_eq!(uart.remove("interrupts").unwrap(), u32s(&[0, 0, 4]));
    assert_eq!(
        uart.remove("clocks").unwrap(),
        u32s(&[PHANDLE_APB_PCLK, PHANDLE_APB_PCLK])
    );
    assert_eq!(
        uart.remove("clock-names").unwrap(),
        strs(&["uartclk", "apb_pclk"])
    );
    assert!(uart.is_empty());

    let mut rtc = take("/rtc@11000");
    assert_eq!(
        rtc.remove("compatible").unwrap(),
        strs(&["arm,pl031", "arm,primecell"])
    );
    assert_eq!(rtc.remove("reg").unwrap(), u64s(&[0x1_1000, 0x1000]));
    assert_eq!(rtc.remove("interrupts").unwrap(), u32s(&[0, 1, 4]));
    assert_eq!(rtc.remove("clocks").unwrap(), u32s(&[PHANDLE_APB_PCLK]));
    assert_eq!(rtc.remove("clock-names").unwrap(), strs(&["apb_pclk"]));
    assert!(rtc.is_empty());

    let mut ns = take("/serial@12000");
    assert_eq!(ns.remove("compatible").unwrap(), strs(&["ns16550a"]));
    assert_eq!(ns.remove("reg").unwrap(), u64s(&[0x1_2000, 0x1000]));
    assert_eq!(ns.remove("interrupts").unwrap(), u32s(&[0, 2, 4]));
    assert_eq!(ns.remove("clock-frequency").unwrap(), u32s(&[1_843_200]));
    assert_eq!(ns.remove("reg-shift").unwrap(), u32s(&[0]));
    assert_eq!(ns.remove("reg-io-width").unwrap(), u32s(&[1]));
    assert_eq!(ns.remove("status").unwrap(), strs(&["okay"]));
    assert!(ns.is_empty());

    for n in 0..8u64 {
        let base = 0x0a00_0000 + n * 0x200;
        let mut v = take(&format!("/virtio_mmio@{base:x}"));
        assert_eq!(v.remove("compatible").unwrap(), strs(&["virtio,mmio"]));
        assert_eq!(v.remove("reg").unwrap(), u64s(&[base, 0x200]));
        assert_eq!(
            v.remove("interrupts").unwrap(),
            u32s(&[0, 16 + n as u32, 4]),
            "virtio-mmio slot {n}: SPI {}, level-high",
            16 + n
        );
        assert_eq!(v.remove("dma-coherent").unwrap(), Vec::<u8>::new());
        assert!(v.is_empty());
    }
    assert!(t.is_empty(), "unchecked nodes: {:?}", t.keys());
}

#[test]
fn interrupts_match_the_platform_intids() {
    // The cells are INTID - 32 (SPI) / INTID - 16 (PPI): cross-check with the platform.
    let t = dump(&generate(&cfg(1)).unwrap());
    let cell = |path: &str| {
        let v = &t[path]["interrupts"];
        u32::from_be_bytes(v[4..8].try_into().unwrap())
    };
    assert_eq!(cell("/serial@10000") + 32, plat::PL011_INTID);
    assert_eq!(cell("/rtc@11000") + 32, plat::PL031_INTID);
    assert_eq!(cell("/serial@12000") + 32, plat::NS16550_INTID);
    assert_eq!(
        cell("/virtio_mmio@a000e00") + 32,
        plat::virtio_mmio_intid(7)
    );
    assert_eq!(cell("/timer") + 16, plat::TIMER_SEC_PHYS_INTID);
}

#[test]
fn without_bootargs_or_initrd_chosen_has_only_the_console() {
    let mut c = cfg(1);
    c.bootargs = None;
    c.initrd = None;
    let t = dump(&generate(&c).unwrap());
    assert_eq!(t["/chosen"].keys().collect::<Vec<_>>(), ["stdout-path"]);
    assert!(t.contains_key("/cpus/cpu@0"));
    assert!(!t.contains_key("/cpus/cpu@1"));
}

#[test]
fn sixteen_cpus() {
    let t = dump(&generate(&cfg(16)).unwrap());
    assert!(t.contains_key("/cpus/cpu@f"));
    assert_eq!(
        t["/interrupt-controller@2f000000"]["reg"][16..],
        u64s(&[0x2f10_0000, 16 * 0x2_0000])[..]
    );
}

#[test]
fn dtc_accepts_it_without_warnings() {
    for n in [1, 2, 16] {
        let dtb = generate(&cfg(n)).unwrap();
        let Some(dts) = dtc(&dtb) else { return };
        assert!(dts.contains("compatible = \"arm,gic-v3\";"), "{dts}");
        assert!(
            dts.contains("bootargs = \"console=ttyAMA0 earlycon\";"),
            "{dts}"
        );
        assert!(dts.contains(&format!("cpu@{:x}", n - 1)), "{dts}");
    }
}

#[test]
fn fdt_rs_reads_every_compatible() {
    use fdt_rs::base::DevTree;
    use fdt_rs::prelude::*;
    let dtb = generate(&cfg(2)).unwrap();
    // The strings block ends the blob unpadded: copy into u32s, zero-filling the tail.
    let words: Vec<u32> = dtb
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_ne_bytes(w)
        })
        .collect();
    // SAFETY: the u32 buffer is aligned and at least the blob's length.
    let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), dtb.len()) };
    // SAFETY: aligned buffer of exactly totalsize bytes, as fdt-rs requires.
    let tree = unsafe { DevTree::new(bytes) }.unwrap();
    // Walk every property with fdt-rs's own iterator (its compatible_nodes() reads past
    // FDT_END when the last node matches, so it is not used here).
    let mut by_compat: Vec<(String, String)> = Vec::new();
    let mut it = tree.props();
    while let Some(p) = it.next().unwrap() {
        if p.name().unwrap() == "compatible" {
            let node = p.node().name().unwrap().to_string();
            let mut strs = p.iter_str();
            while let Some(s) = strs.next().unwrap() {
                by_compat.push((s.to_string(), node.clone()));
            }
        }
    }
    let nodes = |c: &str| -> Vec<String> {
        by_compat
            .iter()
            .filter(|(s, _)| s == c)
            .map(|(_, n)| n.clone())
            .collect()
    };
    assert_eq!(nodes("arm,primecell"), ["serial@10000", "rtc@11000"]);
    assert_eq!(nodes("arm,gic-v3"), ["interrupt-controller@2f000000"]);
    assert_eq!(nodes("ns16550a"), ["serial@12000"]);
    assert_eq!(nodes("virtio,mmio").len(), 8);
    assert_eq!(nodes("virtio,mmio")[7], "virtio_mmio@a000e00");
}

/// With host entropy, /chosen carries rng-seed (all of it) and kaslr-seed (its first 8
/// bytes, as a u64), as QEMU's virt does; Linux seeds its pool and KASLR from them.
#[test]
fn entropy_seeds_in_chosen() {
    let mut c = cfg(1);
    c.seed = (1..=64u8).collect();
    let t = dump(&generate(&c).unwrap());
    let chosen = &t["/chosen"];
    assert_eq!(chosen["rng-seed"], (1..=64u8).collect::<Vec<_>>());
    assert_eq!(
        chosen["kaslr-seed"],
        u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]).to_be_bytes()
    );
}
