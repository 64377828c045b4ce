#!/usr/bin/env bash
# Seed the fuzz corpora (fuzz/corpus/<target>/, not committed) from the repository's
# own inputs: the plan corpus and example repository for `plan`, GitHub's real webhook
# payloads for `webhook`, a few commit messages for `trailers`. `judge` needs none.
# Idempotent: files are named after their source; libFuzzer's own finds are kept.
set -euo pipefail
cd "$(dirname "$0")"
root=..
webhooks=${ROLLGATE_WEBHOOKS:-$root/../shared/data/github-webhooks}

mkdir -p corpus/plan corpus/webhook corpus/trailers corpus/judge

# plan: every plan and settings file of the corpus and the example repository.
find "$root/tests/corpus" "$root/example-repo" -type f \( -name '*.yaml' -o -name '*.yml' \) |
  while read -r f; do
    name=${f#"$root"/}
    cp "$f" "corpus/plan/${name//\//_}"
  done

# webhook: `<event>\n<delivery>\n<signature>\n<secret>\n<body>`; an empty signature
# line means "the right one", so the body reaches the parser. The event is the file
# name up to its first dot (`pull_request.opened.payload.json`).
if [ -d "$webhooks" ]; then
  for f in "$webhooks"/*.json; do
    event=$(basename "$f")
    event=${event%%.*}
    {
      printf '%s\n72d3162e-cc78-11e3-81ab-4c9367dc0958\n\ns3cret\n' "$event"
      cat "$f"
    } >"corpus/webhook/$(basename "$f")"
  done
else
  echo "seed.sh: no $webhooks, webhook corpus not seeded" >&2
fi
printf 'issue_comment\nx\nsha256=00\ns3cret\n{"action":"created","issue":{"number":1},"comment":{"id":1,"body":"/rollgate promote web","user":{"login":"a"}},"repository":{"full_name":"o/r"}}' \
  >corpus/webhook/comment-bad-signature

# trailers: a status commit, a revert, a command and a human's commit.
sha=0123456789abcdef0123456789abcdef01234567
printf 'web: Progressing step 1/3 at 10%% (reg/web:2)\n\nRollgate-Plan: web\nRollgate-Revision: %s\nRollgate-Artifact: reg/web:2\nRollgate-Phase: Progressing\nRollgate-From: Pending\nRollgate-Step: 1/3\nRollgate-Weight: 10\nRollgate-Verdict: pass errors value=0 n=120\nRollgate-Reason: step 1 of 3\n' "$sha" \
  >corpus/trailers/status
printf 'Roll back web to reg/web:1\n\nrollgate rolled web back: errors failed.\n\nRollgate-Plan: web\nRollgate-Rollback-Of: %s\nRollgate-Reason: errors failed\nRollgate-Verdict: fail errors value=0.2 max=0.01 n=500 (0.2 is above max 0.01)\n' "$sha" \
  >corpus/trailers/revert
printf 'Promote web\n\nRollgate-Plan: web\nRollgate-Command: promote\nRollgate-Comment: 42\n' \
  >corpus/trailers/command
printf 'Fix the checkout button\n\nSigned-off-by: A Human <a@example.com>\n' \
  >corpus/trailers/human

for t in plan webhook trailers judge; do
  echo "corpus/$t: $(find "corpus/$t" -type f | wc -l) files"
done
