package rollgate.builtin.digest_test

import rego.v1

import data.rollgate.builtin.digest

digest_hex := "4f1c0e6c8f3b2a1d9e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e"

kube_plan(artifact) := {
	"metadata": {"name": "checkout"},
	"spec": {
		"workload": {"kubernetes": {"namespace": "payments", "deployment": "checkout"}},
		"artifact": artifact,
	},
}

test_pinned_kubernetes_artifact_is_allowed if {
	count(digest.deny) == 0 with input as {"plan": kube_plan(concat("", ["registry.example/checkout@sha256:", digest_hex]))}
}

test_tagged_kubernetes_artifact_is_denied if {
	digest.deny == {`plan "checkout": artifact "registry.example/checkout:1.2" is not pinned by digest (use name@sha256:<digest>)`} with input as {"plan": kube_plan("registry.example/checkout:1.2")}
}

test_short_digest_is_denied if {
	count(digest.deny) == 1 with input as {"plan": kube_plan("registry.example/checkout@sha256:4f1c")}
}

test_uppercase_digest_is_denied if {
	count(digest.deny) == 1 with input as {"plan": kube_plan(concat("", ["registry.example/checkout@sha256:", upper(digest_hex)]))}
}

test_missing_artifact_is_denied if {
	count(digest.deny) == 1 with input as {"plan": {"metadata": {"name": "checkout"}, "spec": {"workload": {"kubernetes": {}}}}}
}

test_local_workload_with_a_tag_is_allowed if {
	count(digest.deny) == 0 with input as {"plan": {
		"metadata": {"name": "api"},
		"spec": {"workload": {"local": {"command": ["./api"]}}, "artifact": "api:1.2"},
	}}
}

test_tagged_knative_artifact_is_denied if {
	count(digest.deny) == 1 with input as {"plan": {
		"metadata": {"name": "hello"},
		"spec": {"workload": {"knative": {"namespace": "web", "service": "hello"}}, "artifact": "registry.example/hello:2"},
	}}
}

test_pinned_knative_artifact_is_allowed if {
	count(digest.deny) == 0 with input as {"plan": {
		"metadata": {"name": "hello"},
		"spec": {
			"workload": {"knative": {"namespace": "web", "service": "hello"}},
			"artifact": concat("", ["registry.example/hello@sha256:", digest_hex]),
		},
	}}
}
