//! Reference-model test of the snapshot verbs: random sequences of guest writes, mkdir, mv
//! (revert), mv (rename) and rmdir through a real mount, against a model that keeps every
//! snapshot's bytes and the tree. After every step every disk the mount serves must equal the
//! model byte for byte, and virsh's tree must equal the model's. `VSFS_MODEL_STEPS` sets the
//! number of steps per run (default 18); `VSFS_MODEL_SEED` the seed.

mod common;

use std::collections::BTreeMap;

use common::vm::{eventually, expected_tree, mounted_tree, sh, virsh, Mount, TestDomain};

const DISK: usize = 4 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Setup {
    OfflineInternal,
    OfflineExternal,
    RunningInternal,
}

struct Model {
    live: Vec<u8>,
    snapshots: BTreeMap<String, (Option<String>, Vec<u8>)>,
    current: Option<String>,
    next_name: u32,
}

impl Model {
    fn path_of(&self, name: &str) -> String {
        let mut parts = vec![name.to_string()];
        let mut cursor = name.to_string();
        while let Some(Some(p)) = self.snapshots.get(&cursor).map(|(p, _)| p.clone()) {
            parts.push(p.clone());
            cursor = p;
        }
        parts.reverse();
        parts.join("/")
    }

    fn tree(&self) -> std::collections::BTreeSet<String> {
        self.snapshots.keys().map(|n| self.path_of(n)).collect()
    }
}

fn rand(state: &mut u64) -> u64 {
    common::next_random(state)
}

fn check(mount: &Mount, dom: &TestDomain, model: &Model, step: &str) {
    eventually(3, "tree equals virsh's", || {
        mounted_tree(mount, dom) == expected_tree(dom)
    });
    assert_eq!(
        mounted_tree(mount, dom),
        model.tree(),
        "{step}: tree differs from the model"
    );
    assert_eq!(dom.current(), model.current, "{step}: current");
    let live = std::fs::read(mount.path(&format!("{}/live/vda.raw", dom.name))).unwrap();
    assert!(
        live == model.live,
        "{step}: live disk differs from the model"
    );
    for (name, (_, bytes)) in &model.snapshots {
        let file = mount.path(&format!(
            "{}/snapshots/{}/vda.raw",
            dom.name,
            model.path_of(name)
        ));
        let served = std::fs::read(&file).unwrap();
        assert!(
            served == *bytes,
            "{step}: snapshot {name} differs from the model"
        );
    }
}

fn run(setup: Setup, label: &str) {
    let steps: usize = std::env::var("VSFS_MODEL_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(18);
    let seed: u64 = std::env::var("VSFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut state = seed ^ ((setup as u64 + 1) * 0x9e37_79b9);
    let dom = TestDomain::new(label, "4M");
    let running = setup == Setup::RunningInternal;
    if running {
        virsh(&["start", &dom.name]);
    }
    let kind = if setup == Setup::OfflineExternal {
        "snapshot_kind=external"
    } else {
        "snapshot_kind=internal"
    };
    let mount = Mount::new(&[kind]);
    let mut model = Model {
        live: vec![0; DISK],
        snapshots: BTreeMap::new(),
        current: None,
        next_name: 0,
    };
    let p = |rel: &str| {
        mount
            .path(&format!("{}/{rel}", dom.name))
            .to_str()
            .unwrap()
            .to_string()
    };
    for i in 0..steps {
        let names: Vec<String> = model.snapshots.keys().cloned().collect();
        let pick = |state: &mut u64| names[(rand(state) % names.len() as u64) as usize].clone();
        let op = rand(&mut state) % 10;
        let step = match op {
            // Guest write.
            0..=3 => {
                let offset = (rand(&mut state) % (DISK as u64 - 65536)) as usize / 512 * 512;
                let len = (1 + rand(&mut state) % 128) as usize * 512;
                let pattern = (rand(&mut state) % 255 + 1) as u8;
                let cmd = format!("write -P {pattern} {offset} {len}");
                if running {
                    dom.write_running(&cmd);
                    dom.write_running("flush");
                } else {
                    dom.write_live(&cmd);
                }
                model.live[offset..offset + len].fill(pattern);
                format!("write {pattern:#x} at {offset} len {len}")
            }
            // mkdir in the current snapshot's directory.
            4..=5 => {
                model.next_name += 1;
                let name = format!("s{}", model.next_name);
                let at = match &model.current {
                    Some(c) => format!("snapshots/{}/{name}", model.path_of(c)),
                    None => format!("snapshots/{name}"),
                };
                sh("mkdir", &[&p(&at)]);
                model
                    .snapshots
                    .insert(name.clone(), (model.current.clone(), model.live.clone()));
                model.current = Some(name.clone());
                format!("mkdir {name}")
            }
            // mv NAME live/: revert.
            6..=7 if !names.is_empty() => {
                let name = pick(&mut state);
                sh(
                    "mv",
                    &[
                        &p(&format!("snapshots/{}", model.path_of(&name))),
                        &p("live/"),
                    ],
                );
                model.live = model.snapshots[&name].1.clone();
                model.current = Some(name.clone());
                format!("revert to {name}")
            }
            // mv NAME NEW: rename (internal snapshots refuse it).
            8 if !names.is_empty() => {
                let name = pick(&mut state);
                model.next_name += 1;
                let new = format!("r{}", model.next_name);
                let from = p(&format!("snapshots/{}", model.path_of(&name)));
                let to = format!("{}/{new}", from.rsplit_once('/').unwrap().0);
                let out = std::process::Command::new("mv")
                    .args([&from, &to])
                    .output()
                    .unwrap();
                if setup == Setup::OfflineExternal {
                    assert!(
                        out.status.success(),
                        "rename {name}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let entry = model.snapshots.remove(&name).unwrap();
                    model.snapshots.insert(new.clone(), entry);
                    for (parent, _) in model.snapshots.values_mut() {
                        if parent.as_deref() == Some(name.as_str()) {
                            *parent = Some(new.clone());
                        }
                    }
                    if model.current.as_deref() == Some(name.as_str()) {
                        model.current = Some(new.clone());
                    }
                    format!("rename {name} to {new}")
                } else {
                    assert!(
                        String::from_utf8_lossy(&out.stderr).contains("Operation not permitted")
                    );
                    format!("rename {name} refused (internal)")
                }
            }
            // rmdir NAME: children move up.
            _ if !names.is_empty() => {
                let name = pick(&mut state);
                sh(
                    "rmdir",
                    &[&p(&format!("snapshots/{}", model.path_of(&name)))],
                );
                let (parent, _) = model.snapshots.remove(&name).unwrap();
                for (p, _) in model.snapshots.values_mut() {
                    if p.as_deref() == Some(name.as_str()) {
                        *p = parent.clone();
                    }
                }
                if model.current.as_deref() == Some(name.as_str()) {
                    model.current = parent;
                }
                format!("rmdir {name}")
            }
            _ => continue,
        };
        check(&mount, &dom, &model, &format!("{setup:?} step {i}: {step}"));
    }
}

#[test]
fn model_offline_internal() {
    run(Setup::OfflineInternal, "model-int");
}

#[test]
fn model_offline_external() {
    run(Setup::OfflineExternal, "model-ext");
}

#[test]
fn model_running_internal() {
    run(Setup::RunningInternal, "model-run");
}
