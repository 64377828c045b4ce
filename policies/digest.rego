# Image workloads (Kubernetes, Knative) must pin their artifact by digest: a tag can
# move after the canary was judged, a digest cannot. (Knative revision names are also
# derived from the digest.)
package rollgate.builtin.digest

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

image_workload if input.plan.spec.workload.kubernetes

image_workload if input.plan.spec.workload.knative

deny contains msg if {
	image_workload
	artifact := object.get(input.plan.spec, "artifact", "")
	not pinned(artifact)
	msg := sprintf("plan %q: artifact %q is not pinned by digest (use name@sha256:<digest>)", [plan_name, artifact])
}

# name@sha256:<64 lowercase hex digits>. String functions rather than regex.match:
# regorus compiles a regex on every call, and this rule runs for every plan.
pinned(artifact) if {
	is_string(artifact)
	parts := split(artifact, "@sha256:")
	count(parts) == 2
	name := parts[0]
	name != ""
	not contains(name, "@")
	count(parts[1]) == 64
	trim_left(parts[1], "0123456789abcdef") == ""
}
