//! The kernel's public API is frozen (blueprint 2.1): the crate root re-exports exactly six
//! names and `KernelEvent` has exactly four variants. Changing either fails here.
#![allow(clippy::unwrap_used)] // test code: a panic is a failure with a message
#![cfg(not(ron_loom))]

use std::collections::BTreeSet;

use ron_kernel::{Bus, Config, HealthState, KernelEvent, Metrics, wait_for_ctrl_c};

/// Collects the names an item tree makes public at the crate root.
fn use_names(tree: &syn::UseTree, out: &mut BTreeSet<String>) {
    match tree {
        syn::UseTree::Path(p) => use_names(&p.tree, out),
        syn::UseTree::Name(n) => {
            out.insert(n.ident.to_string());
        }
        syn::UseTree::Rename(r) => {
            out.insert(r.rename.to_string());
        }
        syn::UseTree::Glob(_) => {
            out.insert("*".to_owned());
        }
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_names(t, out)),
    }
}

#[test]
fn root_reexports_exactly_the_frozen_six() {
    // Compiled in (not read at run time): a test binary reused from another checkout of the
    // same sources still reads them.
    let src = include_str!("../src/lib.rs");
    let file = syn::parse_file(src).unwrap();
    let mut reexports = BTreeSet::new();
    let mut modules = BTreeSet::new();
    let mut other = Vec::new();
    for item in &file.items {
        let public = |v: &syn::Visibility| matches!(v, syn::Visibility::Public(_));
        match item {
            syn::Item::Use(u) if public(&u.vis) => use_names(&u.tree, &mut reexports),
            syn::Item::Mod(m) if public(&m.vis) => {
                modules.insert(m.ident.to_string());
            }
            syn::Item::Use(_) | syn::Item::Mod(_) => {}
            syn::Item::Fn(f) if public(&f.vis) => other.push(f.sig.ident.to_string()),
            syn::Item::Struct(s) if public(&s.vis) => other.push(s.ident.to_string()),
            syn::Item::Enum(e) if public(&e.vis) => other.push(e.ident.to_string()),
            syn::Item::Trait(t) if public(&t.vis) => other.push(t.ident.to_string()),
            syn::Item::Type(t) if public(&t.vis) => other.push(t.ident.to_string()),
            syn::Item::Const(c) if public(&c.vis) => other.push(c.ident.to_string()),
            syn::Item::Static(s) if public(&s.vis) => other.push(s.ident.to_string()),
            syn::Item::Macro(m) => other.push(format!("macro {:?}", m.mac.path.get_ident())),
            _ => {}
        }
    }
    let frozen: BTreeSet<String> = [
        "Bus",
        "KernelEvent",
        "Metrics",
        "HealthState",
        "Config",
        "wait_for_ctrl_c",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(reexports, frozen, "the root re-exports are frozen");
    assert!(other.is_empty(), "items defined at the root: {other:?}");
    // Supporting types live in these modules; a new public module is an API change too.
    let allowed: BTreeSet<String> = ["bus", "config", "health", "metrics"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(modules, allowed);
}

#[test]
fn kernel_event_has_exactly_four_variants() {
    // An exhaustive match without a wildcard: adding or changing a variant breaks the build.
    fn name(e: &KernelEvent) -> &'static str {
        match e {
            KernelEvent::Health { service: _, ok: _ } => "health",
            KernelEvent::ConfigUpdated { version: _ } => "config_updated",
            KernelEvent::ServiceCrashed {
                service: _,
                reason: _,
            } => "service_crashed",
            KernelEvent::Shutdown => "shutdown",
        }
    }
    let all = [
        KernelEvent::Health {
            service: "s".into(),
            ok: true,
        },
        KernelEvent::ConfigUpdated { version: 1 },
        KernelEvent::ServiceCrashed {
            service: "s".into(),
            reason: "r".into(),
        },
        KernelEvent::Shutdown,
    ];
    let names: BTreeSet<_> = all.iter().map(name).collect();
    assert_eq!(names.len(), 4);
}

#[test]
fn the_six_names_are_usable() {
    let metrics = Metrics::new();
    let bus = Bus::new(4096);
    bus.register_metrics(&metrics);
    let health = HealthState::new();
    health.mark_started();
    assert!(health.readiness().reads);
    let config = Config::builder().build().unwrap();
    assert_eq!(config.version(), 1);
    // wait_for_ctrl_c is a future we can name and drop without awaiting.
    drop(wait_for_ctrl_c());
    let text = metrics.encode();
    for family in [
        "bus_lagged",
        "bus_overflow_dropped",
        "service_restarts",
        "request_latency_seconds",
        "rejected",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from\n{text}"
        );
    }
}
