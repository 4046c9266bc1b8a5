"""On-device ML: TFLite/LiteRT runtime selection now; feature windows, models and FL later."""
