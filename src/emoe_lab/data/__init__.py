"""Task data: read, split, tokenise and cache classification and regression tasks, and
pad batches for training."""

from emoe_lab.data.tasks import TaskData, load_task, make_collator, validate_task_config

__all__ = ["TaskData", "load_task", "make_collator", "validate_task_config"]
