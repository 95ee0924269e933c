"""The two training datasets SDG writes and training reads (LAB's phases).

knowledge_train: knowledge + foundational_skills leaves (the knowledge phases);
skills_train: compositional_skills leaves (the skills phase, with replay).
"""

from __future__ import annotations

KNOWLEDGE_TRAIN = "knowledge_train"
SKILLS_TRAIN = "skills_train"
TRAINING_DATASETS = (KNOWLEDGE_TRAIN, SKILLS_TRAIN)

# Which taxonomy branches feed each dataset (as the report and recipe show them).
BRANCHES = {KNOWLEDGE_TRAIN: "knowledge + foundational_skills", SKILLS_TRAIN: "compositional_skills"}


def dataset_for_branch(branch: str) -> str:
    return SKILLS_TRAIN if branch == "compositional_skills" else KNOWLEDGE_TRAIN
