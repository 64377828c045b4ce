# Critical plans change only inside their change window. Outside it, the change is
# denied unless it is an emergency: the change carries the label `emergency`, or the
# plan has the label `emergency: "true"`. rollgate computes `input.windowOpen`.
package rollgate.builtin.windows

import rego.v1

plan_name := object.get(input, ["plan", "metadata", "name"], "<unnamed>")

deny contains msg if {
	input.plan.metadata.labels.tier == "critical"
	input.windowOpen == false
	not emergency
	msg := sprintf("plan %q: critical plan changed while its change window is closed (label the change \"emergency\" to override)", [plan_name])
}

emergency if "emergency" in input.change.labels

emergency if input.plan.metadata.labels.emergency in {"true", true}
