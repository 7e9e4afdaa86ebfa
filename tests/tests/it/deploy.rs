//! The deployment files as far as this machine can check them (no cluster, no container
//! engine here): `deploy/kourier`'s manifests parse as Kubernetes objects of the shape
//! Kourier's gateway has, the config file they mount passes `weir check`, and the exact
//! arguments the Deployment gives the container are accepted by the binary
//! (`weir proxy --check-args`), with the image's entrypoint being the binary the Dockerfile
//! builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::Value;
use weir_tests::weir_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the repository")
        .to_path_buf()
}

fn yaml(path: &str) -> Value {
    let p = repo().join(path);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[key],
        })
}

fn str_of<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", get(v, path)))
}

#[test]
fn kourier_manifests_run_the_binary_with_arguments_it_accepts() {
    let kustomization = yaml("deploy/kourier/kustomization.yaml");
    let resources: Vec<&str> = get(&kustomization, "resources")
        .as_sequence()
        .expect("a resource list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(resources.contains(&"gateway.yaml") && resources.contains(&"configmap.yaml"));
    for r in &resources {
        assert!(
            repo().join("deploy/kourier").join(r).exists(),
            "{r} is listed but missing"
        );
    }

    let deploy = yaml("deploy/kourier/gateway.yaml");
    assert_eq!(str_of(&deploy, "kind"), "Deployment");
    assert_eq!(str_of(&deploy, "apiVersion"), "apps/v1");
    assert_eq!(str_of(&deploy, "metadata.name"), "3scale-kourier-gateway");
    assert_eq!(str_of(&deploy, "metadata.namespace"), "kourier-system");
    // Kourier's Services and the controller's prober find the pods by this label.
    assert_eq!(
        str_of(&deploy, "spec.selector.matchLabels.app"),
        "3scale-kourier-gateway"
    );
    assert_eq!(
        str_of(&deploy, "spec.template.metadata.labels.app"),
        "3scale-kourier-gateway"
    );
    let container = get(&deploy, "spec.template.spec.containers.0");
    let ports: Vec<u64> = get(container, "ports")
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    for p in [8080, 8081, 8090, 8443, 9443, 8444] {
        assert!(ports.contains(&p), "port {p} is not declared: {ports:?}");
    }
    // kubelet's probes: Kourier's status host on the internal listener.
    for probe in ["readinessProbe", "livenessProbe"] {
        let http = get(container, &format!("{probe}.httpGet"));
        assert_eq!(http["path"].as_str(), Some("/ready"), "{probe}");
        assert_eq!(http["port"].as_u64(), Some(8081), "{probe}");
        assert_eq!(
            http["httpHeaders"][0]["value"].as_str(),
            Some("internalkourier"),
            "{probe}"
        );
    }
    let grace = get(&deploy, "spec.template.spec.terminationGracePeriodSeconds")
        .as_u64()
        .expect("a termination grace period");

    // The mounted config: valid, names the status host, drains within the grace period.
    let cm = yaml("deploy/kourier/configmap.yaml");
    assert_eq!(str_of(&cm, "kind"), "ConfigMap");
    let volume = get(&deploy, "spec.template.spec.volumes.0.configMap.name");
    assert_eq!(volume.as_str(), Some(str_of(&cm, "metadata.name")));
    let config_text = cm["data"]["weir.yaml"]
        .as_str()
        .expect("the ConfigMap holds weir.yaml");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.yaml");
    std::fs::write(&config, config_text).unwrap();
    let check = Command::new(weir_bin!())
        .arg("check")
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "weir check: {check:?}");
    let parsed: Value = serde_norway::from_str(config_text).unwrap();
    assert_eq!(
        parsed["readiness"]["hosts"][0].as_str(),
        Some("internalkourier")
    );
    let drain: u64 = parsed["drain_timeout"]
        .as_str()
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.parse().ok())
        .expect("drain_timeout in seconds");
    assert!(
        drain < grace,
        "drain_timeout {drain}s must end before the grace period {grace}s"
    );

    // The container's command and args, run as given (the downward API's $(POD_NAME)
    // expanded, the config at its mount path moved to the temp file).
    let command: Vec<&str> = get(container, "command")
        .as_sequence()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(command, ["/usr/local/bin/weir"]);
    let mount = str_of(container, "volumeMounts.0.mountPath");
    let args: Vec<String> = get(container, "args")
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| {
            a.as_str()
                .expect("a string argument")
                .replace("$(POD_NAME)", "3scale-kourier-gateway-abc12")
                .replace(&format!("{mount}/weir.yaml"), &config.to_string_lossy())
        })
        .collect();
    let out = Command::new(weir_bin!())
        .args(&args)
        .arg("--check-args")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "weir {args:?} --check-args: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "listener http 0.0.0.0:8080",
        "listener http 0.0.0.0:8090",
        "listener internal 0.0.0.0:8081",
        "listener https 0.0.0.0:8443",
        "listener https 0.0.0.0:9443",
        "listener internal-https 0.0.0.0:8444",
        "xds http://net-kourier-controller.knative-serving:18000 as node \"3scale-kourier-gateway\" (state of the world)",
        "autoscaler off",
    ] {
        assert!(stdout.contains(line), "{line:?} not in:\n{stdout}");
    }

    // The image: the Dockerfile builds that binary (profile-guided by default, through the
    // script the repository's own figures come from) and makes it the entrypoint.
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains("ARG PGO=1"));
    assert!(dockerfile.contains("benches/pgo.sh"));
    assert!(dockerfile.contains("cp target/pgo/release/weir /weir"));
    assert!(dockerfile.contains("cargo build --release --locked --bin weir"));
    assert!(dockerfile.contains("COPY --from=build /weir /usr/local/bin/weir"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/weir"]"#));
    let pgo = std::fs::read_to_string(repo().join("benches/pgo.sh")).unwrap();
    assert!(pgo.contains("--locked") && pgo.contains("target/pgo/release/weir"));
    assert!(dockerfile.contains("USER 65532"), "non-root");
}

#[test]
fn check_args_refuses_what_the_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.yaml");
    std::fs::write(
        &config,
        "tls:\n  - hosts: [a.example.com]\n    cert: missing.pem\n    key: missing.key\n",
    )
    .unwrap();
    let out = Command::new(weir_bin!())
        .args(["proxy", "--https=0.0.0.0:8443", "--check-args", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls[0].cert: cannot read"));
    let out = Command::new(weir_bin!())
        .args([
            "proxy",
            "--http=0.0.0.0:8080",
            "--http=0.0.0.0:8080",
            "--check-args",
        ])
        .args(["--xds", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("given twice"));
}
