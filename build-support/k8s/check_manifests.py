#!/usr/bin/env python3
"""The rules every rendered overlay of deploy/kubernetes must follow, beyond
the Kubernetes schemas (which build-support/k8s-check validates first).

    check_manifests.py OVERLAY.yaml...                       one rendered overlay per file
    check_manifests.py --infra INFRA.yaml --against OVERLAY.yaml
                                                             the operators' example, for that overlay

Prints every broken rule as `file: kind/name: what` and exits 1 if there is
one. The rules (see deploy/kubernetes/README.md for why each holds):

* each service is a Deployment with startup, liveness and readiness probes on
  its HTTP endpoint, readiness (/readyz) not pointed at liveness (/healthz);
* requests and limits for CPU and memory on every container, requests at most
  the limits, the memory limit at least twice the measured peak RSS;
* a preStop hook that drains (/drain on the service's own port), and a
  termination grace longer than what the service may take to stop after it
  (the drain call's timeout and the preStop sleep + SHUTDOWN_GRACE_SECONDS +
  the drains and slack of the host's stop order + the trace exporter's flush);
  SHUTDOWN_GRACE_SECONDS longer than the slowest in-flight work (a payment, 15 s);
* rolling updates that never go below the running replicas (maxUnavailable 0);
* topology spread over the service's own pods;
* the migrations as an init container (`--migrate-only`, same image);
* a PodDisruptionBudget that lets a drain take a pod, and a
  HorizontalPodAutoscaler with a metric per service, owning the replica count
  (no spec.replicas on its Deployment); a consumer's maxReplicas at most
  KAFKA_EVENT_PARTITIONS;
* a ServiceAccount per service (no token mounted), a default-deny
  NetworkPolicy and one per service with both directions, whose every rule
  names its ports and every egress rule its destinations;
* no `latest` or missing tag; no Secret object and no secret value in a
  ConfigMap, an env value, an argument or an annotation;
* the database connections every pod the autoscalers may run could open
  (printed; for the operators' example, within its max_connections);
* non-root, no privilege escalation, a read-only root filesystem.
"""

import re
import sys

import yaml

SERVICES = ("order-api", "payment-service", "notification-service")
CONSUMERS = ("payment-service", "notification-service")
HTTP_PORTS = {"order-api": 9101, "payment-service": 9102, "notification-service": 9103}
# Peak RSS measured by build-support/bench (docs/performance.md, the
# latency-0 phase: the highest of its phases), MiB.
PEAK_RSS_MIB = {"order-api": 36, "payment-service": 60, "notification-service": 25}
# The host's stop order after the shutdown grace: the drains (5 s) and the
# slack for consumers' commits, the relay's last rows and the pool (20 s).
STOP_AFTER_GRACE_SECONDS = 5 + 20
# The slowest work in flight: a payment (PAYMENT_TIMEOUT with its retries).
SLOWEST_WORK_SECONDS = 15
# The trace exporter's last flush at exit (the OTLP exporter's timeout).
TELEMETRY_FLUSH_SECONDS = 10
# Connections a pod may open beyond its pools: the readiness probe's own.
PROBE_CONNECTIONS = 1
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|_KEY$|^DATABASE_URL$)")
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


def quantity(value):
    """A CPU or memory quantity as a number (cores, bytes)."""
    text = str(value)
    units = {
        "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    }
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", text)
    if not match or (match.group(2) and match.group(2) not in units):
        raise ValueError(f"not a quantity: {text}")
    return float(match.group(1)) * units.get(match.group(2), 1)


class Report:
    def __init__(self, source):
        self.source = source
        self.problems = []

    def add(self, obj, message):
        name = f"{obj.get('kind', '?')}/{name_of(obj) or '?'}" if obj else "-"
        self.problems.append(f"{self.source}: {name}: {message}")


def load(path):
    with open(path, encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if isinstance(doc, dict)]


def by_kind(objects, kind):
    return [obj for obj in objects if obj.get("kind") == kind]


def name_of(obj):
    return (obj.get("metadata") or {}).get("name") or ""


def number(report, config, key, default):
    """A numeric setting of the ConfigMap; reported (and the default used) when it is not one."""
    try:
        return float(config.get(key, default))
    except (TypeError, ValueError):
        report.add(None, f"{key} is not a number: {config.get(key)!r}")
        return float(default)


def connections_per_pod(report, config, service):
    """What one pod of `service` may open: its pools and the readiness probe."""
    main = number(report, config, "DATABASE_MAX_CONNECTIONS", 10)
    extra = {
        # + the backpressure count's own connection.
        "order-api": number(report, config, "ORDER_API_READ_DB_CONNECTIONS", 4)
        + number(report, config, "ORDER_API_CONSUMER_DB_CONNECTIONS", 4) + 1,
        # + two connections each for the batched requests and call counts
        # (asynchronous commit).
        "payment-service": number(report, config, "PAYMENT_GATEWAY_DB_CONNECTIONS", 16) + 4,
        "notification-service": 0,
    }[service]
    return int(main + extra + PROBE_CONNECTIONS)


def worst_case_connections(report, objects):
    """The connections of every pod the autoscalers may run, a surge pod each."""
    config = config_of(objects)
    total = 0
    for service in SERVICES:
        hpa = next((h for h in by_kind(objects, "HorizontalPodAutoscaler")
                    if ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == service), None)
        pods = ((hpa or {}).get("spec") or {}).get("maxReplicas", 1) + 1
        total += pods * connections_per_pod(report, config, service)
    return total


def selects(selector, labels):
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def config_of(objects):
    data = {}
    for config_map in by_kind(objects, "ConfigMap"):
        data.update(config_map.get("data") or {})
    return data


def image_tag_problem(image):
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image} has no tag"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image} uses the tag latest"
    return None


def secret_like(text):
    return bool(URL_WITH_PASSWORD.search(str(text)))


def secret_mounts(deployment, container):
    """Where the container mounts volumes made from a Secret."""
    volumes = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    from_secrets = {volume.get("name") for volume in volumes.get("volumes") or [] if "secret" in volume}
    return [
        str(mount.get("mountPath", "")).rstrip("/") + "/"
        for mount in container.get("volumeMounts") or []
        if mount.get("name") in from_secrets and mount.get("mountPath")
    ]


def check_container(report, deployment, container, service):
    resources = container.get("resources") or {}
    for part in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(part) or {}):
                report.add(deployment, f"container {container['name']} has no {part}.{resource}")
    try:
        for resource in ("cpu", "memory"):
            request = (resources.get("requests") or {}).get(resource)
            limit = (resources.get("limits") or {}).get(resource)
            if request is not None and limit is not None and quantity(request) > quantity(limit):
                report.add(deployment, f"container {container['name']}: {resource} request {request} above its limit {limit}")
    except ValueError as error:
        report.add(deployment, f"container {container['name']}: {error}")
    problem = image_tag_problem(container.get("image", ""))
    if problem:
        report.add(deployment, problem)
    security = container.get("securityContext") or {}
    if security.get("allowPrivilegeEscalation") is not False:
        report.add(deployment, f"container {container['name']} may escalate privileges")
    if security.get("readOnlyRootFilesystem") is not True:
        report.add(deployment, f"container {container['name']} has a writable root filesystem")
    # A secret-sounding name is fine when its value is only the path of a
    # file mounted from a Secret (ORDER_API_TLS_KEY=/etc/order-api/tls/tls.key).
    mounted = secret_mounts(deployment, container)
    for variable in container.get("env") or []:
        value = str(variable.get("value", ""))
        if any(value.startswith(path) and ".." not in value for path in mounted):
            continue
        if "value" in variable and (SECRET_NAME.search(str(variable.get("name"))) or secret_like(variable["value"])):
            report.add(deployment, f"env {variable.get('name')} carries a value that belongs in a Secret")
    for argument in (container.get("args") or []) + (container.get("command") or []):
        if secret_like(argument) or re.search(r"(?i)password=\S", str(argument)):
            report.add(deployment, f"container {container['name']} has a secret value in its command line")


def check_deployment(report, deployment, objects, config):
    service = name_of(deployment)
    spec = deployment.get("spec") or {}
    template = (spec.get("template") or {}).get("spec") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    containers = template.get("containers") or []
    main = next((c for c in containers if c.get("name") == service), None)
    if main is None:
        report.add(deployment, f"no container named {service}")
        return
    port = HTTP_PORTS[service]
    port_names = {p.get("name"): p.get("containerPort") for p in main.get("ports") or []}

    def probe_path(kind):
        probe = main.get(kind)
        if not probe:
            report.add(deployment, f"no {kind}")
            return None
        get = probe.get("httpGet")
        if not get:
            report.add(deployment, f"{kind} is not an HTTP check of the service's endpoint")
            return None
        target = get.get("port")
        if port_names.get(target, target) != port:
            report.add(deployment, f"{kind} does not ask the HTTP endpoint (port {port})")
        return get.get("path")

    startup, liveness, readiness = (probe_path(k) for k in ("startupProbe", "livenessProbe", "readinessProbe"))
    if readiness is not None and readiness != "/readyz":
        report.add(deployment, f"readinessProbe asks {readiness}, not /readyz"
                   + (" (readiness pointed at liveness)" if readiness == liveness else ""))
    if liveness is not None and liveness != "/healthz":
        report.add(deployment, f"livenessProbe asks {liveness}, not /healthz (liveness must not depend on the dependencies)")
    if startup is not None and startup not in ("/healthz", "/readyz"):
        report.add(deployment, f"startupProbe asks {startup}")

    for container in containers + (template.get("initContainers") or []):
        check_container(report, deployment, container, service)
    limit = ((main.get("resources") or {}).get("limits") or {}).get("memory")
    try:
        if limit is not None and quantity(limit) < 2 * PEAK_RSS_MIB[service] * 2**20:
            report.add(deployment, f"memory limit {limit} is below twice the measured peak RSS ({PEAK_RSS_MIB[service]} MiB)")
    except ValueError:
        pass

    inits = template.get("initContainers") or []
    if not any("--migrate-only" in (c.get("args") or []) + (c.get("command") or []) for c in inits):
        report.add(deployment, "no init container runs the migrations (--migrate-only)")
    for init in inits:
        if init.get("image") != main.get("image"):
            report.add(deployment, f"init container {init.get('name')} runs {init.get('image')}, not the service's image {main.get('image')}")

    pre_stop = ((main.get("lifecycle") or {}).get("preStop")) or {}
    command = " ".join(str(part) for part in (pre_stop.get("exec") or {}).get("command") or [])
    if f"127.0.0.1:{port}/drain" not in command and not (
        (pre_stop.get("httpGet") or {}).get("path") == "/drain"
        and port_names.get((pre_stop.get("httpGet") or {}).get("port"), (pre_stop.get("httpGet") or {}).get("port")) == port
    ):
        report.add(deployment, f"no preStop hook that drains the service (POST 127.0.0.1:{port}/drain) before SIGTERM")
    sleep = re.search(r"sleep (\d+)", command)
    call = re.search(r"(?:-m|--max-time) (\d+)", command)
    pre_stop_seconds = (int(sleep.group(1)) if sleep else int((pre_stop.get("sleep") or {}).get("seconds", 0))) + (
        int(call.group(1)) if call else 0
    )
    shutdown_grace = number(report, config, "SHUTDOWN_GRACE_SECONDS", 10)
    if shutdown_grace < SLOWEST_WORK_SECONDS:
        report.add(deployment, f"SHUTDOWN_GRACE_SECONDS {shutdown_grace:g} is shorter than the slowest in-flight work ({SLOWEST_WORK_SECONDS} s)")
    needed = pre_stop_seconds + shutdown_grace + STOP_AFTER_GRACE_SECONDS + TELEMETRY_FLUSH_SECONDS
    grace = template.get("terminationGracePeriodSeconds", 30)
    if grace <= needed:
        report.add(deployment, f"terminationGracePeriodSeconds {grace} is not longer than the stop may take ({needed:g} s)")

    strategy = spec.get("strategy") or {}
    rolling = strategy.get("rollingUpdate") or {}
    if strategy.get("type", "RollingUpdate") != "RollingUpdate" or str(rolling.get("maxUnavailable", "25%")) not in ("0", "0%"):
        report.add(deployment, "a rolling update may go below the running replicas (maxUnavailable must be 0)")
    if not any(selects(c.get("labelSelector"), labels) for c in template.get("topologySpreadConstraints") or []):
        report.add(deployment, "no topology spread over its own pods")

    pod_security = template.get("securityContext") or {}
    if pod_security.get("runAsNonRoot") is not True:
        report.add(deployment, "pods may run as root")
    account = template.get("serviceAccountName")
    accounts = [a for a in by_kind(objects, "ServiceAccount") if name_of(a) == account]
    if not account or account == "default" or not accounts:
        report.add(deployment, "no ServiceAccount of its own")
    else:
        # The pod's setting wins over its account's.
        mounted = template.get("automountServiceAccountToken", accounts[0].get("automountServiceAccountToken", True))
        if mounted is not False:
            report.add(deployment, f"ServiceAccount {account} token mounted although the service calls no Kubernetes API")

    hpas = [h for h in by_kind(objects, "HorizontalPodAutoscaler")
            if ((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name") == service]
    minimum = ((hpas[0].get("spec") or {}).get("minReplicas", 1)) if hpas else spec.get("replicas", 1)
    budgets = [p for p in by_kind(objects, "PodDisruptionBudget") if selects((p.get("spec") or {}).get("selector"), labels)]
    if not budgets:
        report.add(deployment, "no PodDisruptionBudget selects its pods")
    for budget in budgets:
        budget_spec = budget.get("spec") or {}
        unavailable, available = budget_spec.get("maxUnavailable"), budget_spec.get("minAvailable")
        blocks = (
            (unavailable is not None and str(unavailable) in ("0", "0%"))
            or (available is not None and (str(available) == "100%" or (isinstance(available, int) and available >= minimum)))
        )
        if blocks:
            report.add(budget, f"allows no voluntary disruption at {minimum} replica(s): a node drain would wait forever")
    if not hpas:
        report.add(deployment, "no HorizontalPodAutoscaler")
    else:
        hpa_spec = hpas[0].get("spec") or {}
        if not hpa_spec.get("metrics"):
            report.add(hpas[0], "no metric to scale on")
        if "replicas" in spec:
            report.add(deployment, "sets spec.replicas although an autoscaler owns the count (an apply would undo a scale-out)")
        if service in CONSUMERS:
            partitions = int(number(report, config, "KAFKA_EVENT_PARTITIONS", 6))
            maximum = hpa_spec.get("maxReplicas", 0)
            if maximum > partitions:
                report.add(hpas[0], f"maxReplicas {maximum} above KAFKA_EVENT_PARTITIONS {partitions}: the extra consumers would sit idle")
    policies = [p for p in by_kind(objects, "NetworkPolicy")
                if selects((p.get("spec") or {}).get("podSelector"), labels)]
    if not any({"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or []) for p in policies):
        report.add(deployment, "no NetworkPolicy of its own for both directions")
    for policy in policies:
        policy_spec = policy.get("spec") or {}
        for rule in policy_spec.get("ingress") or []:
            if not (rule or {}).get("ports"):
                report.add(policy, "an ingress rule open on every port")
        for rule in policy_spec.get("egress") or []:
            if not (rule or {}).get("ports") or not (rule or {}).get("to"):
                report.add(policy, "an egress rule open to every destination or port")


def check_overlay(path):
    report = Report(path)
    objects = load(path)
    config = config_of(objects)
    deployments = {name_of(d): d for d in by_kind(objects, "Deployment")}
    for service in SERVICES:
        if service not in deployments:
            report.add(None, f"no Deployment {service}")
        else:
            check_deployment(report, deployments[service], objects, config)
    if not any(
        (p.get("spec") or {}).get("podSelector") in ({}, None)
        and {"Ingress", "Egress"} <= set((p.get("spec") or {}).get("policyTypes") or [])
        and not (p.get("spec") or {}).get("ingress") and not (p.get("spec") or {}).get("egress")
        for p in by_kind(objects, "NetworkPolicy")
    ):
        report.add(None, "no default-deny NetworkPolicy")
    for secret in by_kind(objects, "Secret"):
        if secret.get("data") or secret.get("stringData"):
            report.add(secret, "a Secret with values is committed (create it out of band)")
    for config_map in by_kind(objects, "ConfigMap"):
        for key, value in (config_map.get("data") or {}).items():
            if SECRET_NAME.search(key) or secret_like(value):
                report.add(config_map, f"{key} looks like a secret value in a ConfigMap")
        if config_map.get("binaryData"):
            report.add(config_map, "binaryData in a ConfigMap (a secret belongs in a Secret)")
    for obj in objects:
        annotated = [(obj.get("metadata") or {}).get("annotations") or {}]
        template = ((obj.get("spec") or {}).get("template") or {}) if isinstance(obj.get("spec"), dict) else {}
        annotated.append((template.get("metadata") or {}).get("annotations") or {})
        for annotations in annotated:
            for key, value in annotations.items():
                if secret_like(value) or (SECRET_NAME.search(str(key).upper()) and "/" not in str(key)):
                    report.add(obj, f"annotation {key} looks like a secret value")
    return report.problems


def check_infra(path, against=None):
    """The operators' example: the replication of the cluster mode, the
    event topics' partitions and the connections of the overlay `against`."""
    report = Report(path)
    objects = load(path)
    overlay = load(against) if against else []
    overlay_config = config_of(overlay)
    kafkas = by_kind(objects, "Kafka")
    if not kafkas:
        report.add(None, "no Strimzi Kafka")
    for kafka in kafkas:
        config = ((kafka.get("spec") or {}).get("kafka") or {}).get("config") or {}
        expected = {
            "default.replication.factor": 3, "min.insync.replicas": 2,
            "offsets.topic.replication.factor": 3, "transaction.state.log.replication.factor": 3,
            "transaction.state.log.min.isr": 2, "unclean.leader.election.enable": False,
        }
        for key, value in expected.items():
            if config.get(key) != value:
                report.add(kafka, f"{key} is {config.get(key)!r}, not {value!r}")
    nodes = sum((p.get("spec") or {}).get("replicas", 0) for p in by_kind(objects, "KafkaNodePool")
                if "broker" in ((p.get("spec") or {}).get("roles") or []))
    if nodes < 3:
        report.add(None, f"{nodes} Kafka brokers, fewer than the 3 replicas of every topic")
    for kafka in kafkas:
        spec_kafka = (kafka.get("spec") or {}).get("kafka") or {}
        for listener in spec_kafka.get("listeners") or []:
            if ((listener.get("authentication") or {}).get("type")) != "scram-sha-512":
                report.add(kafka, f"listener {listener.get('name')} takes clients without SCRAM-SHA-512")
        if ((spec_kafka.get("authorization") or {}).get("type")) != "simple":
            report.add(kafka, "no ACL authorization (authorization.type simple)")
    users = {name_of(u): u for u in by_kind(objects, "KafkaUser")}
    for service in ("order-api", "payment-service", "notification-service"):
        user = users.get(service)
        if user is None:
            report.add(None, f"no KafkaUser {service}")
            continue
        spec = user.get("spec") or {}
        if (spec.get("authentication") or {}).get("type") != "scram-sha-512":
            report.add(user, "does not authenticate with SCRAM-SHA-512")
        acls = (spec.get("authorization") or {}).get("acls") or []
        if not acls or any(str((acl.get("resource") or {}).get("name", "")) in ("", "*") for acl in acls):
            report.add(user, "no ACLs, or an ACL on every resource")
    topics = {((t.get("spec") or {}).get("topicName") or name_of(t)): t for t in by_kind(objects, "KafkaTopic")}
    for name in ("order.placed", "payment.completed", "order.unprocessable", "order.dlq", "payment.dlq", "notification.dlq"):
        topic = topics.get(name)
        if topic is None:
            report.add(None, f"no KafkaTopic {name}")
            continue
        spec = topic.get("spec") or {}
        if spec.get("replicas") != 3 or str((spec.get("config") or {}).get("min.insync.replicas")) != "2":
            report.add(topic, "not RF 3 with min.insync.replicas 2")
        if overlay and name in ("order.placed", "payment.completed"):
            partitions = int(number(report, overlay_config, "KAFKA_EVENT_PARTITIONS", 6))
            if spec.get("partitions") != partitions:
                report.add(topic, f"{spec.get('partitions')} partitions, not the {partitions} of KAFKA_EVENT_PARTITIONS the autoscalers count on")
    clusters = by_kind(objects, "Cluster")
    if not clusters:
        report.add(None, "no CloudNativePG Cluster")
    for cluster in clusters:
        spec = cluster.get("spec") or {}
        synchronous = ((spec.get("postgresql") or {}).get("synchronous") or {}).get("number", 0)
        if spec.get("instances", 1) < 3 or synchronous < 1:
            report.add(cluster, "fewer than 3 instances or no synchronous standby")
        if overlay:
            needed = worst_case_connections(report, overlay)
            allowed = int(((spec.get("postgresql") or {}).get("parameters") or {}).get("max_connections", 100))
            # PostgreSQL keeps 3 for superusers by default.
            if allowed - 3 < needed:
                report.add(cluster, f"max_connections {allowed} is below the {needed} connections the overlay's pods could open")
    return report.problems


def main(arguments):
    infra = "--infra" in arguments
    against = None
    if "--against" in arguments:
        index = arguments.index("--against")
        if index + 1 >= len(arguments):
            print(__doc__, file=sys.stderr)
            return 2
        against = arguments[index + 1]
        arguments = arguments[:index] + arguments[index + 2:]
    paths = [a for a in arguments if a != "--infra"]
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    problems = []
    for path in paths:
        problems += check_infra(path, against) if infra else check_overlay(path)
        if not infra:
            connections = worst_case_connections(Report(path), load(path))
            print(f"{path}: the pods the autoscalers may run (a surge pod each) could open {connections} database connections")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"manifest rules: {len(paths)} file(s), every rule holds")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
