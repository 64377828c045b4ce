# Kubernetes workloads must pin their artifact by digest: a tag can move after the
# canary was judged, a digest cannot.
package rollgate.builtin.digest

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

deny contains msg if {
	input.plan.spec.workload.kubernetes
	artifact := object.get(input.plan.spec, "artifact", "")
	not pinned(artifact)
	msg := sprintf("plan %q: artifact %q is not pinned by digest (use name@sha256:<digest>)", [plan_name, artifact])
}

pinned(artifact) if {
	is_string(artifact)
	regex.match(`^[^@\s]+@sha256:[a-f0-9]{64}$`, artifact)
}
