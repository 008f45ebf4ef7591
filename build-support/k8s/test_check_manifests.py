"""Each rule of check_manifests.py catches what it is about: the rendered
overlays pass, and every one of these breakages of them is reported.

    FOODORDER_K8S_RENDERED=target/k8s python3 -m unittest build-support/k8s/test_check_manifests.py

(build-support/k8s-check renders the overlays there and runs this.)
"""

import copy
import os
import sys
import tempfile
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_manifests as rules  # noqa: E402

RENDERED = os.environ.get("FOODORDER_K8S_RENDERED", "target/k8s")


def find(objects, kind, name):
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def deployment(objects, name):
    return find(objects, "Deployment", name)


def main_container(objects, name):
    return deployment(objects, name)["spec"]["template"]["spec"]["containers"][0]


def drop(kind, name):
    """A change that removes one object."""
    def change(objects):
        objects[:] = [o for o in objects if not (o["kind"] == kind and o["metadata"]["name"] == name)]
    return change


def config_map(objects):
    return next(o for o in objects if o["kind"] == "ConfigMap")


class OverlayRules(unittest.TestCase):
    overlay = "local"

    def setUp(self):
        with open(os.path.join(RENDERED, f"{self.overlay}.yaml"), encoding="utf-8") as handle:
            self.objects = [doc for doc in yaml.safe_load_all(handle) if doc]

    def problems(self, objects, checker=rules.check_overlay):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump_all(objects, handle)
        try:
            return checker(handle.name)
        finally:
            os.unlink(handle.name)

    def assert_reported(self, change, expected):
        objects = copy.deepcopy(self.objects)
        change(objects)
        problems = self.problems(objects)
        self.assertTrue(
            any(expected in problem for problem in problems),
            f"expected a problem containing {expected!r}, got {problems}",
        )

    def test_the_rendered_overlays_pass(self):
        for overlay in ("local", "production"):
            with self.subTest(overlay=overlay):
                self.assertEqual(rules.check_overlay(os.path.join(RENDERED, f"{overlay}.yaml")), [])

    def test_probes(self):
        self.assert_reported(lambda o: main_container(o, "order-api").pop("readinessProbe"), "no readinessProbe")
        self.assert_reported(lambda o: main_container(o, "payment-service").pop("startupProbe"), "no startupProbe")
        self.assert_reported(
            lambda o: main_container(o, "order-api")["readinessProbe"]["httpGet"].update(path="/healthz"),
            "readiness pointed at liveness",
        )
        self.assert_reported(
            lambda o: main_container(o, "notification-service")["livenessProbe"]["httpGet"].update(path="/readyz"),
            "livenessProbe asks /readyz",
        )
        self.assert_reported(
            lambda o: main_container(o, "order-api")["livenessProbe"].update(httpGet={"path": "/healthz", "port": 50051}),
            "does not ask the HTTP endpoint",
        )

    def test_resources(self):
        self.assert_reported(
            lambda o: main_container(o, "order-api")["resources"]["limits"].pop("memory"), "has no limits.memory"
        )
        self.assert_reported(
            lambda o: deployment(o, "payment-service")["spec"]["template"]["spec"]["initContainers"][0]["resources"].pop("requests"),
            "container migrate has no requests.cpu",
        )
        self.assert_reported(
            lambda o: main_container(o, "payment-service")["resources"]["limits"].update(memory="96Mi"),
            "below twice the measured peak RSS",
        )
        self.assert_reported(
            lambda o: main_container(o, "order-api")["resources"]["requests"].update(cpu="2"), "above its limit"
        )

    def test_images(self):
        self.assert_reported(lambda o: main_container(o, "order-api").update(image="foodorder/order-api:latest"), "tag latest")
        self.assert_reported(lambda o: main_container(o, "order-api").update(image="foodorder/order-api"), "has no tag")

    def test_stopping(self):
        self.assert_reported(lambda o: main_container(o, "order-api").pop("lifecycle"), "no preStop hook")
        self.assert_reported(
            lambda o: main_container(o, "notification-service")["lifecycle"]["preStop"]["exec"].update(
                command=["sh", "-c", "curl -fsS -m 3 -X POST http://127.0.0.1:9102/drain || true"]
            ),
            "no preStop hook that drains the service (POST 127.0.0.1:9103/drain)",
        )
        # The drain call's timeout counts: 62 s would do without it, not with it.
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=62),
            "terminationGracePeriodSeconds 62 is not longer than the stop may take (63 s)",
        )
        self.assert_reported(
            lambda o: deployment(o, "payment-service")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
            "terminationGracePeriodSeconds 30 is not longer",
        )
        self.assert_reported(lambda o: config_map(o)["data"].update(SHUTDOWN_GRACE_SECONDS="5"), "shorter than the slowest")

    def test_rollout_and_spread(self):
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["strategy"]["rollingUpdate"].update(maxUnavailable=1),
            "maxUnavailable must be 0",
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["spec"].pop("topologySpreadConstraints"),
            "no topology spread",
        )
        self.assert_reported(
            lambda o: deployment(o, "notification-service")["spec"]["template"]["spec"].pop("initContainers"),
            "no init container runs the migrations",
        )

    def test_budgets_and_autoscalers(self):
        self.assert_reported(
            drop("PodDisruptionBudget", "payment-service"),
            "no PodDisruptionBudget",
        )
        self.assert_reported(
            drop("HorizontalPodAutoscaler", "order-api"),
            "no HorizontalPodAutoscaler",
        )
        self.assert_reported(
            lambda o: find(o, "HorizontalPodAutoscaler", "payment-service")["spec"].update(maxReplicas=10),
            "above KAFKA_EVENT_PARTITIONS",
        )
        self.assert_reported(
            lambda o: find(o, "HorizontalPodAutoscaler", "order-api")["spec"].pop("metrics"), "no metric to scale on"
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"].update(replicas=3), "sets spec.replicas although an autoscaler"
        )
        self.assert_reported(
            lambda o: find(o, "PodDisruptionBudget", "order-api")["spec"].update(maxUnavailable=0),
            "allows no voluntary disruption",
        )

        def min_available_all(objects):
            budget = find(objects, "PodDisruptionBudget", "payment-service")["spec"]
            budget.pop("maxUnavailable")
            budget["minAvailable"] = "100%"

        self.assert_reported(min_available_all, "allows no voluntary disruption")
        self.assert_reported(lambda o: config_map(o)["data"].update(KAFKA_EVENT_PARTITIONS="six"), "is not a number")

    def test_network_policies_and_accounts(self):
        self.assert_reported(
            drop("NetworkPolicy", "order-api"),
            "no NetworkPolicy of its own",
        )
        self.assert_reported(
            drop("NetworkPolicy", "default-deny"),
            "no default-deny NetworkPolicy",
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["spec"].update(serviceAccountName="default"),
            "no ServiceAccount of its own",
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["spec"].update(automountServiceAccountToken=True),
            "token mounted",
        )
        self.assert_reported(
            lambda o: find(o, "NetworkPolicy", "payment-service")["spec"]["egress"].append({}),
            "an egress rule open to every destination or port",
        )
        self.assert_reported(
            lambda o: find(o, "NetworkPolicy", "order-api")["spec"]["ingress"].append({"from": [{"podSelector": {}}]}),
            "an ingress rule open on every port",
        )

    def test_secrets(self):
        self.assert_reported(
            lambda o: o.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}, "stringData": {"DATABASE_URL": "postgres://a:b@h/d"}}),
            "a Secret with values is committed",
        )
        self.assert_reported(
            lambda o: main_container(o, "order-api")["env"].append({"name": "KAFKA_SASL_PASSWORD", "value": "hunter2"}),
            "belongs in a Secret",
        )
        # A key's path is fine only inside a volume made from a Secret.
        def key_path_outside_a_secret(o):
            main_container(o, "payment-service")["env"].append({"name": "PAYMENT_TLS_KEY", "value": "/etc/tls/tls.key"})
        self.assert_reported(key_path_outside_a_secret, "env PAYMENT_TLS_KEY carries a value that belongs in a Secret")

        def with_key_in(path):
            def change(o):
                spec = deployment(o, "order-api")["spec"]["template"]["spec"]
                spec.setdefault("volumes", []).append({"name": "tls", "secret": {"secretName": "order-api-tls"}})
                container = main_container(o, "order-api")
                container.setdefault("volumeMounts", []).append({"name": "tls", "mountPath": "/etc/order-api/tls"})
                container["env"].append({"name": "ORDER_API_TLS_KEY", "value": path})
            return change
        message = "env ORDER_API_TLS_KEY carries a value that belongs in a Secret"
        self.assert_reported(with_key_in("/etc/order-api/tls/../../key"), message)
        objects = copy.deepcopy(self.objects)
        with_key_in("/etc/order-api/tls/tls.key")(objects)
        self.assertFalse(any(message in problem for problem in self.problems(objects)), "a path inside the Secret's volume is fine")
        self.assert_reported(
            lambda o: config_map(o)["data"].update(OTHER_URL="postgres://user:pass@db:5432/x"),
            "looks like a secret value",
        )
        self.assert_reported(
            lambda o: main_container(o, "payment-service").update(args=["--database", "postgres://u:hunter2@db/x"]),
            "secret value in its command line",
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["metadata"]["annotations"].update(
                dsn="postgres://u:hunter2@db/x"
            ),
            "annotation dsn looks like a secret value",
        )

    def test_odd_input_is_reported_not_a_crash(self):
        self.assert_reported(lambda o: o.append({"kind": "ConfigMap", "metadata": None, "data": {"PASSWORD": "x"}}), "PASSWORD")

    def test_security(self):
        self.assert_reported(
            lambda o: main_container(o, "order-api")["securityContext"].update(readOnlyRootFilesystem=False),
            "writable root filesystem",
        )
        self.assert_reported(
            lambda o: deployment(o, "order-api")["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False),
            "may run as root",
        )


class InfraRules(unittest.TestCase):
    def setUp(self):
        with open(os.path.join(RENDERED, "infra.yaml"), encoding="utf-8") as handle:
            self.objects = [doc for doc in yaml.safe_load_all(handle) if doc]

    def reported(self, change):
        objects = copy.deepcopy(self.objects)
        change(objects)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump_all(objects, handle)
        try:
            return rules.check_infra(handle.name, os.path.join(RENDERED, "local.yaml"))
        finally:
            os.unlink(handle.name)

    def test_the_example_passes(self):
        self.assertEqual(
            rules.check_infra(os.path.join(RENDERED, "infra.yaml"), os.path.join(RENDERED, "local.yaml")), []
        )

    def test_partitions_and_connections_follow_the_overlay(self):
        problems = self.reported(lambda o: find(o, "KafkaTopic", "payment-completed")["spec"].update(partitions=3))
        self.assertTrue(any("not the 6 of KAFKA_EVENT_PARTITIONS" in p for p in problems), problems)
        problems = self.reported(
            lambda o: find(o, "Cluster", "postgres")["spec"]["postgresql"]["parameters"].update(max_connections="100")
        )
        self.assertTrue(any("max_connections 100 is below" in p for p in problems), problems)

    def test_replication_is_checked(self):
        kafka = lambda o: find(o, "Kafka", "kafka")["spec"]["kafka"]["config"]  # noqa: E731
        self.assertTrue(self.reported(lambda o: kafka(o).update({"min.insync.replicas": 1})))
        self.assertTrue(self.reported(lambda o: kafka(o).update({"unclean.leader.election.enable": True})))
        self.assertTrue(self.reported(lambda o: find(o, "KafkaTopic", "order-placed")["spec"].update(replicas=1)))
        self.assertTrue(self.reported(lambda o: find(o, "KafkaNodePool", "dual-role")["spec"].update(replicas=1)))
        self.assertTrue(self.reported(lambda o: find(o, "Cluster", "postgres")["spec"].update(instances=1)))

    def test_authentication_and_acls_are_checked(self):
        kafka = lambda o: find(o, "Kafka", "kafka")["spec"]["kafka"]  # noqa: E731
        problems = self.reported(lambda o: kafka(o)["listeners"][0].pop("authentication"))
        self.assertTrue(any("without SCRAM-SHA-512" in p for p in problems), problems)
        problems = self.reported(lambda o: kafka(o).pop("authorization"))
        self.assertTrue(any("no ACL authorization" in p for p in problems), problems)
        problems = self.reported(lambda o: o.remove(find(o, "KafkaUser", "payment-service")))
        self.assertTrue(any("no KafkaUser payment-service" in p for p in problems), problems)
        problems = self.reported(
            lambda o: find(o, "KafkaUser", "order-api")["spec"]["authorization"]["acls"][0]["resource"].update(name="*")
        )
        self.assertTrue(any("an ACL on every resource" in p for p in problems), problems)


if __name__ == "__main__":
    unittest.main()
