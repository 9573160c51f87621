"""The stateful joins of one partition: production with candidate scores, pairs with late labels."""
