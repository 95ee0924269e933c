"""The whole LAB flow as one command (`lab-ray run`) and its reporting."""
