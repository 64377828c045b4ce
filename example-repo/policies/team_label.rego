# Every plan names the team that owns it, so a rollback pages the right people.
package rollgate.example.team_label

import rego.v1

deny contains msg if {
	not input.plan.metadata.labels.team
	msg := sprintf("plan %q has no `team` label; add metadata.labels.team", [input.plan.metadata.name])
}
