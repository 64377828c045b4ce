# A plan with `spec.promotedFrom: X` may only take an artifact that already succeeded
# in plan X: one listed in X's status `succeeded` history, or X's stable artifact.
# The policy input carries every status file as `input.statuses[<plan name>]`.
package rollgate.builtin.promotion

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

deny contains msg if {
	source := input.plan.spec.promotedFrom
	not has_success(source)
	msg := sprintf("plan %q: promoted from %q, which has no successful rollout yet", [plan_name, source])
}

deny contains msg if {
	source := input.plan.spec.promotedFrom
	has_success(source)
	artifact := object.get(input.plan.spec, "artifact", "")
	not succeeded_in(source, artifact)
	msg := sprintf("plan %q: artifact %q has not succeeded in %q yet (promote only what %q already ran)", [plan_name, artifact, source, source])
}

has_success(source) if count(input.statuses[source].succeeded) > 0

has_success(source) if input.statuses[source].stableArtifact

succeeded_in(source, artifact) if {
	some run in input.statuses[source].succeeded
	run.artifact == artifact
}

succeeded_in(source, artifact) if input.statuses[source].stableArtifact == artifact
