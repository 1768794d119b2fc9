"""Running a model: single images, tiles, and whole data sets into a histogram."""
