"""The training runtime behind train.py: config sections, the loader, losses, the task, optimiser, distributed
backends, checkpoints, export and trackers. train.py is the loop; everything it calls lives here."""
