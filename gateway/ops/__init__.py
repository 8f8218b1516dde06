"""Operations: the admin HTTP interface, metrics, gatewayctl and its plugin scaffold."""
