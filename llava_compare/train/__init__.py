"""Training: config composition, what each stage trains, the Trainer, the entry point.

``python -m llava_compare.train recipe=NAME key=value ...``
"""
