"""Dataset formats (COCO, VOC2007, ...) and the embedded synthetic scene generator."""
