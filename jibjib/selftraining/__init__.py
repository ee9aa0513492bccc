"""Self-training on unlabelled field audio: teacher -> window scores -> pseudo-labels -> student -> next round.

- `unlabelled`: the features of the unlabelled recordings (the feature stage's extraction, reused per file by
  content).
- `pseudo`: a teacher's window scores over them, and the pseudo-labels drawn from the scores with the val
  split's window thresholds.
- `report`: teacher and students side by side.

The student trains with `jibjib train --pseudo-labels` (jibjib.training.pseudo_labels) and is evaluated by
`jibjib evaluate`; workflow/rules/selftraining.smk chains the rounds.
"""
