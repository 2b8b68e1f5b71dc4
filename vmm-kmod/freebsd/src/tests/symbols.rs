//! Keeps `SYMBOLS` (the list the vmm.ko undefined-symbol check reads) equal to the set
//! of names the `extern "C"` blocks of this module declare, and checks its format.

use std::collections::BTreeSet;

/// Every `.rs` file at the top of this crate's src/, as (name, text): a file added
/// later is checked without being listed here.
fn sources() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    out.sort();
    out
}
const SYMBOLS: &str = include_str!("../../SYMBOLS");

/// Names declared by `fn name(` or `static [mut] name:` inside `extern "C" { ... }`
/// blocks (top level of the block: the declarations here are one per item), except
/// the `__start_set_*` / `__stop_set_*` bounds, which the static linker defines in the
/// module itself (they are never undefined in vmm.ko).
fn declared(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for line in src.lines() {
        let t = line.trim();
        if depth == 0 {
            if t.starts_with("extern \"C\" {") {
                depth = 1;
            }
            continue;
        }
        depth = depth.saturating_add(t.matches('{').count());
        depth = depth.saturating_sub(t.matches('}').count());
        if depth == 0 {
            continue;
        }
        let rest = t
            .strip_prefix("pub ")
            .unwrap_or(t)
            .trim_start_matches("unsafe ")
            .to_string();
        let name = if let Some(r) = rest.strip_prefix("fn ") {
            r.split(['(', '<']).next()
        } else if let Some(r) = rest.strip_prefix("static ") {
            r.trim_start_matches("mut ").split(':').next()
        } else {
            None
        };
        if let Some(n) = name.map(str::trim) {
            if !n.starts_with("__start_set_") && !n.starts_with("__stop_set_") {
                out.push(n.to_string());
            }
        }
    }
    out
}

fn listed() -> Vec<(String, String)> {
    SYMBOLS
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            let sym = f.next().unwrap_or_default().to_string();
            let hdr = f.next().unwrap_or_default().to_string();
            assert!(
                f.next().is_none(),
                "SYMBOLS line has more than two fields: {l}"
            );
            (sym, hdr)
        })
        .collect()
}

#[test]
fn symbols_list_matches_declarations() {
    let mut decl = BTreeSet::new();
    let files = sources();
    assert!(files.len() > 15, "found only {} source files", files.len());
    for (file, src) in &files {
        for n in declared(src) {
            assert!(
                decl.insert(n.clone()),
                "{n} declared twice (again in {file})"
            );
        }
    }
    let list: BTreeSet<String> = listed().into_iter().map(|(s, _)| s).collect();
    let missing: Vec<_> = decl.difference(&list).collect();
    let stale: Vec<_> = list.difference(&decl).collect();
    assert!(
        missing.is_empty(),
        "declared but not in SYMBOLS: {missing:?}"
    );
    assert!(stale.is_empty(), "in SYMBOLS but not declared: {stale:?}");
    assert!(
        decl.len() > 40,
        "parser found too few declarations: {}",
        decl.len()
    );
}

#[test]
fn symbols_list_is_well_formed() {
    let entries = listed();
    let mut seen = BTreeSet::new();
    for (sym, hdr) in &entries {
        assert!(seen.insert(sym.clone()), "{sym} listed twice");
        assert!(
            sym.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad symbol name {sym}"
        );
        assert!(
            // A header, or the assembly file defining a symbol no header declares
            // (`hyp_stub_vectors`: its users declare it themselves).
            hdr.starts_with("sys/") && (hdr.ends_with(".h") || hdr.ends_with(".S")),
            "bad header for {sym}: {hdr}"
        );
    }
}

#[test]
fn parser_sees_statics_and_variadics() {
    let src = "extern \"C\" {\n    pub static mut foo: u8;\n    pub fn bar(x: i32, ...) -> i32;\n}\nfn not_this() {}\n";
    assert_eq!(declared(src), vec!["foo".to_string(), "bar".to_string()]);
}

#[test]
fn parser_ends_indented_blocks_and_skips_set_bounds() {
    let src = "    extern \"C\" {\n        static __start_set_x: u8;\n        fn baz();\n    }\n    static AFTER: u8 = 0;\n";
    assert_eq!(declared(src), vec!["baz".to_string()]);
}
