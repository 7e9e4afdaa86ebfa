//! Updating a table change by change gives the same table as compiling the final config from
//! scratch: random sequences of changes (services, ingresses and revisions put and deleted,
//! hosts moving between objects, revisions deleted while in use, settings changed), each
//! accepted or refused by both paths alike, and when accepted, every probe request routed
//! the same way by both tables.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use weir_config::model::{
    Config, HttpOption, Ingress, PathRule, Revision, Rule, Service, SplitTarget, TrafficTarget,
    Visibility,
};
use weir_config::objects::settings_of;
use weir_config::{validate, Change, Key, Listener, Objects, RouteTable};

const NAMESPACES: [&str; 2] = ["default", "team"];
const NAMES: usize = 6;
const REVISIONS: usize = 5;
/// Explicit hosts objects pick from, so that they collide.
const HOSTS: [&str; 5] = [
    "shared.example.com",
    "a.example.org",
    "b.example.org",
    "s1.default.example.com",
    "api.example.com",
];

fn pick<'a, T>(rng: &mut StdRng, v: &'a [T]) -> &'a T {
    &v[rng.random_range(0..v.len())]
}

/// Percents over `n` targets that add up to 100.
fn percents(rng: &mut StdRng, n: usize) -> Vec<u32> {
    let mut left = 100;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = if i + 1 == n {
            left
        } else {
            rng.random_range(0..=left)
        };
        out.push(p);
        left -= p;
    }
    out
}

fn revision_name(rng: &mut StdRng) -> String {
    format!("r{}", rng.random_range(0..REVISIONS))
}

fn service(rng: &mut StdRng, ns: &str, name: &str) -> Service {
    let n = rng.random_range(1..=3);
    let tags = ["current", "latest", "prev"];
    let traffic = percents(rng, n)
        .into_iter()
        .enumerate()
        .map(|(i, percent)| TrafficTarget {
            revision: revision_name(rng),
            percent,
            tag: rng.random_bool(0.4).then(|| tags[i].to_string()),
            unknown: Default::default(),
        })
        .collect();
    Service {
        name: name.into(),
        namespace: ns.into(),
        visibility: if rng.random_bool(0.2) {
            Visibility::ClusterLocal
        } else {
            Visibility::External
        },
        hosts: if rng.random_bool(0.3) {
            vec![pick(rng, &HOSTS).to_string()]
        } else {
            vec![]
        },
        traffic,
        affinity: None,
        hold: None,
        http_option: if rng.random_bool(0.1) {
            HttpOption::Redirect
        } else {
            HttpOption::Enabled
        },
        unknown: Default::default(),
    }
}

fn ingress(rng: &mut StdRng, ns: &str, name: &str) -> Ingress {
    let rules = (0..rng.random_range(1..=2))
        .map(|r| Rule {
            hosts: vec![if rng.random_bool(0.5) {
                pick(rng, &HOSTS).to_string()
            } else {
                format!("{name}-{r}.{ns}.ingress.example")
            }],
            visibility: if rng.random_bool(0.3) {
                Visibility::ClusterLocal
            } else {
                Visibility::External
            },
            http_option: HttpOption::Enabled,
            paths: ["/a", ""]
                .iter()
                .take(rng.random_range(1..=2))
                .map(|prefix| {
                    let n = rng.random_range(1..=2);
                    PathRule {
                        path: prefix.to_string(),
                        headers: Default::default(),
                        append_headers: Default::default(),
                        rewrite_host: None,
                        splits: percents(rng, n)
                            .into_iter()
                            .map(|percent| SplitTarget {
                                revision: revision_name(rng),
                                namespace: rng
                                    .random_bool(0.2)
                                    .then(|| pick(rng, &NAMESPACES).to_string()),
                                percent,
                                append_headers: Default::default(),
                                unknown: Default::default(),
                            })
                            .collect(),
                        affinity: None,
                        unknown: Default::default(),
                    }
                })
                .collect(),
            unknown: Default::default(),
        })
        .collect();
    Ingress {
        name: name.into(),
        namespace: ns.into(),
        rules,
        hold: None,
        unknown: Default::default(),
    }
}

fn revision(ns: &str, name: &str, cc: u32) -> Revision {
    let mut r: Revision = serde_json::from_str(&format!(r#"{{"name":"{name}"}}"#)).unwrap();
    r.namespace = ns.into();
    r.container_concurrency = cc;
    r
}

fn random_change(rng: &mut StdRng) -> Change {
    let ns = *pick(rng, &NAMESPACES);
    let delete = rng.random_bool(0.25);
    match rng.random_range(0..3) {
        0 => {
            let name = format!("s{}", rng.random_range(0..NAMES));
            let key = Key::new(ns, &name);
            Change::Service(key, (!delete).then(|| service(rng, ns, &name).into()))
        }
        1 => {
            let name = format!("i{}", rng.random_range(0..NAMES));
            let key = Key::new(ns, &name);
            Change::Ingress(key, (!delete).then(|| ingress(rng, ns, &name).into()))
        }
        _ => {
            let name = revision_name(rng);
            let key = Key::new(ns, &name);
            let cc = rng.random_range(0..3);
            Change::Revision(key, (!delete).then(|| revision(ns, &name, cc).into()))
        }
    }
}

/// How a table routes one request, as text.
fn decide(t: &RouteTable, host: &str, listener: Listener, path: &str) -> String {
    let Ok(Some(r)) = t.lookup(host.as_bytes(), listener) else {
        return "none".into();
    };
    let mut out = format!(
        "{} ext={} redirect={} ready={:?}",
        r.owner, r.external, r.redirect_https, r.readiness
    );
    if let Some(p) = r.route(path.as_bytes(), |_| None) {
        out += &format!(" prefix={:?}", p.prefix);
        for x in p.split.targets() {
            out += &format!(" {}/{}:{}:{:?}", x.namespace, x.name, x.percent, x.tag);
        }
        let draws: Vec<String> = (0..100)
            .step_by(7)
            .map(|d| p.split.pick_with(d).name.to_string())
            .collect();
        out += &draws.join(",");
    }
    for (tag, x) in r.tags.iter() {
        out += &format!(" tag {tag}->{}/{}", x.namespace, x.name);
    }
    out
}

/// Every host either table might have, and some it has not.
fn probe_hosts(cfgs: &[&Config]) -> Vec<String> {
    let mut hosts: Vec<String> = HOSTS.iter().map(|h| h.to_string()).collect();
    for cfg in cfgs {
        for s in &cfg.services {
            for h in weir_config::hosts::service_hosts(cfg, s) {
                hosts.push(h.host);
            }
        }
        for i in &cfg.ingresses {
            for r in &i.rules {
                hosts.extend(r.hosts.iter().cloned());
            }
        }
        hosts.extend(cfg.readiness.hosts.iter().cloned());
    }
    hosts.push("nowhere.example".into());
    hosts.sort();
    hosts.dedup();
    hosts
}

fn assert_same(inc: &RouteTable, scratch: &RouteTable, hosts: &[String], ctx: &str) {
    assert_eq!(inc.host_count(), scratch.host_count(), "{ctx}: host count");
    for ns in NAMESPACES {
        for r in 0..REVISIONS {
            let k = Key::new(ns, &format!("r{r}"));
            assert_eq!(
                inc.users_of(&k),
                scratch.users_of(&k),
                "{ctx}: users of {k}"
            );
        }
    }
    for h in hosts {
        for l in [Listener::External, Listener::Internal] {
            for p in ["/", "/a/b"] {
                assert_eq!(
                    decide(inc, h, l, p),
                    decide(scratch, h, l, p),
                    "{ctx}: {h} {l:?} {p}"
                );
            }
        }
    }
}

fn settings(rng: &mut StdRng) -> Config {
    let mut cfg = Config::empty();
    if rng.random_bool(0.5) {
        cfg.domain = "example.net".into();
    }
    cfg.tag_header_routing = rng.random_bool(0.5);
    if rng.random_bool(0.3) {
        cfg.readiness.hosts = vec!["shared.example.com".into()];
    }
    cfg
}

#[test]
fn changes_one_by_one_route_like_the_final_config_compiled_whole() {
    let mut accepted = 0;
    let mut refused = 0;
    for seed in 0..60u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut settings_now = settings(&mut rng);
        let mut objects = Objects::default();
        let mut table: RouteTable = RouteTable::build(&settings_now, &objects, |_| ()).unwrap();
        for step in 0..60 {
            let ctx = format!("seed {seed} step {step}");
            // Now and then the settings change too (a whole-config update).
            let next_settings = if rng.random_bool(0.05) {
                settings(&mut rng)
            } else {
                settings_now.clone()
            };
            let changes: Vec<Change> = (0..rng.random_range(1..=3))
                .map(|_| random_change(&mut rng))
                .collect();
            let after = objects.with_changes(&changes);
            let whole = after.to_config(&next_settings);
            // A settings change is a whole-config update: the pipeline checks it all.
            let checked = if next_settings == settings_now {
                validate::changes(&next_settings, &after, &changes)
            } else {
                validate::validate(&whole)
            };
            let incremental = checked
                .and_then(|()| table.update(&next_settings, &objects, &after, &changes, |_| ()));
            // The same objects as one config, checked and compiled from nothing.
            let scratch = weir_config::compile(&whole);
            match (incremental, scratch) {
                (Ok(inc), Ok(scr)) => {
                    assert_same(&inc, &scr, &probe_hosts(&[&whole]), &ctx);
                    table = inc;
                    objects = after;
                    settings_now = next_settings;
                    accepted += 1;
                }
                (Err(_), Err(_)) => refused += 1,
                (Ok(_), Err(e)) => panic!(
                    "{ctx}: applied incrementally, refused whole: {e}\n{changes:#?}\nusers before: {:?}\nservices {:#?}",
                    changes.iter().map(|c| (c.key().clone(), table.users_of(c.key()))).collect::<Vec<_>>(),
                    whole.services
                ),
                (Err(e), Ok(_)) => panic!("{ctx}: refused incrementally, accepted whole: {e}\n{changes:#?}"),
            }
        }
        // What the table holds is what the config holds, after any number of steps.
        let whole = objects.to_config(&settings_now);
        assert_same(
            &table,
            &weir_config::compile(&whole).unwrap(),
            &probe_hosts(&[&whole]),
            &format!("seed {seed} at the end"),
        );
    }
    // Both kinds of outcome happen often enough to mean something.
    assert!(
        accepted > 500 && refused > 500,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn an_update_shares_what_it_did_not_change() {
    let mut cfg = Config::empty();
    for i in 0..2000 {
        cfg.services.push(
            serde_json::from_value(serde_json::json!({
                "name": format!("s{i}"),
                "traffic": [{"revision": format!("r{i}"), "percent": 100}]
            }))
            .unwrap(),
        );
        cfg.revisions.push(revision("default", &format!("r{i}"), 0));
    }
    let (settings, s, i, r) = settings_of(cfg);
    let objects = Objects::new(s, i, r);
    let table: RouteTable = RouteTable::build(&settings, &objects, |_| ()).unwrap();
    let mut svc = (**objects.services.get(&Key::new("default", "s7")).unwrap()).clone();
    svc.traffic[0].revision = "r8".into();
    let changes = [Change::Service(Key::new("default", "s7"), Some(svc.into()))];
    let after = objects.with_changes(&changes);
    validate::changes(&settings, &after, &changes).unwrap();
    let next = table
        .update(&settings, &objects, &after, &changes, |_| ())
        .unwrap();
    // s7's 4 hosts live in at most 4 of the 1024 shards; the rest are the old table's.
    assert!(
        next.shared_shards(&table) >= 1020,
        "{}",
        next.shared_shards(&table)
    );
    let r = next
        .lookup(b"s7.default.example.com", Listener::External)
        .unwrap()
        .unwrap();
    assert_eq!(&*r.paths[0].split.targets()[0].name, "r8");
    let old = table
        .lookup(b"s7.default.example.com", Listener::External)
        .unwrap()
        .unwrap();
    assert_eq!(
        &*old.paths[0].split.targets()[0].name,
        "r7",
        "the old table is unchanged"
    );
    assert_eq!(next.users_of(&Key::new("default", "r7")), 0);
    assert_eq!(next.users_of(&Key::new("default", "r8")), 2);
}

#[test]
fn change_errors_name_the_object_and_change_nothing() {
    let cfg = weir_config::parse_yaml(
        r#"
services: [{name: a, traffic: [{revision: r1, percent: 100}]}]
revisions: [{name: r1}]
"#,
    )
    .unwrap();
    let (settings, s, i, r) = settings_of(cfg);
    let objects = Objects::new(s, i, r);
    let table: RouteTable = RouteTable::build(&settings, &objects, |_| ()).unwrap();

    // A split naming an unknown revision.
    let b: Service = serde_json::from_value(serde_json::json!({
        "name": "b", "traffic": [{"revision": "nope", "percent": 100}]
    }))
    .unwrap();
    let changes = [Change::Service(Key::new("default", "b"), Some(b.into()))];
    let err = validate::changes(&settings, &objects.with_changes(&changes), &changes)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "services[default/b].traffic[0].revision: default/nope is not declared under revisions; add it there"
    );

    // A host another service has.
    let c: Service = serde_json::from_value(serde_json::json!({
        "name": "c", "hosts": ["a.default.example.com"],
        "traffic": [{"revision": "r1", "percent": 100}]
    }))
    .unwrap();
    let changes = [Change::Service(Key::new("default", "c"), Some(c.into()))];
    let after = objects.with_changes(&changes);
    validate::changes(&settings, &after, &changes).unwrap();
    let err = table
        .update(&settings, &objects, &after, &changes, |_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "services[default/c].hosts[0]: host \"a.default.example.com\" of services[default/c].hosts[0] is already served by service default/a; a host may belong to one service or rule"
    );

    // A revision still in use.
    let changes = [Change::Revision(Key::new("default", "r1"), None)];
    let after = objects.with_changes(&changes);
    validate::changes(&settings, &after, &changes).unwrap();
    let err = table
        .update(&settings, &objects, &after, &changes, |_| ())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "revisions[default/r1]: revision default/r1 is still named by services[default/a]; change that first"
    );
    // The table was not touched by any of it.
    assert!(table
        .lookup(b"a.default.example.com", Listener::External)
        .unwrap()
        .is_some());
    assert_eq!(table.users_of(&Key::new("default", "r1")), 1);
}
