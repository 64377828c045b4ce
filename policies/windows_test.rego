package rollgate.builtin.windows_test

import rego.v1

import data.rollgate.builtin.windows

change(labels, window_open, change_labels) := {
	"plan": {"metadata": {"name": "checkout", "labels": labels}},
	"windowOpen": window_open,
	"change": {"labels": change_labels},
}

test_critical_inside_window_is_allowed if {
	count(windows.deny) == 0 with input as change({"tier": "critical"}, true, [])
}

test_critical_outside_window_is_denied if {
	windows.deny == {`plan "checkout": critical plan changed while its change window is closed (label the change "emergency" to override)`} with input as change({"tier": "critical"}, false, [])
}

test_emergency_change_label_overrides if {
	count(windows.deny) == 0 with input as change({"tier": "critical"}, false, ["emergency"])
}

test_emergency_plan_label_overrides if {
	count(windows.deny) == 0 with input as change({"tier": "critical", "emergency": "true"}, false, [])
}

test_emergency_plan_label_false_does_not_override if {
	count(windows.deny) == 1 with input as change({"tier": "critical", "emergency": "false"}, false, [])
}

test_non_critical_outside_window_is_allowed if {
	count(windows.deny) == 0 with input as change({"tier": "standard"}, false, [])
}
